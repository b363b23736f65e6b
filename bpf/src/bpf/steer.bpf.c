// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * afgate_steer: the XDP program on every dataplane port (one loaded
 * instance per port, maps in maps.h, loader in bpf/src/steer.rs).
 *
 * Decides, per frame, whether it belongs to the dataplane (redirect to the
 * AF_XDP socket of its rx queue) or to the kernel (XDP_PASS):
 *   - LACP (ethertype 0x8809) and 01:80:c2:00:00:0x (STP, LLDP)  -> kernel
 *   - unicast for another MAC, if STEER_ONLY_OWN_MAC              -> kernel
 *   - IPv4 (untagged or in one 802.1Q/802.1ad tag) matching a
 *     passthru rule (node address + TCP 22, ...)                  -> kernel
 *   - everything else -> bpf_redirect_map(xsks, rx queue, XDP_PASS)
 *     (no socket on the queue while a handover hold runs  -> XDP_DROP)
 *
 * Fail-open: the program is attached through netlink, not a bpf_link, so
 * it outlives a crashed dataplane; the crashed process's sockets leave the
 * XSKMAP, and the XDP_PASS fallback of bpf_redirect_map() then hands every
 * frame to the kernel instead of black-holing it.
 *
 * Malformed frames (truncated Ethernet, VLAN, IPv4 or L4 ports) are
 * XDP_PASSed, not XDP_ABORTED as STYLE §2 would map them: the kernel's own
 * parsers drop what is really garbage and count it in its own stats, while
 * an ABORTED verdict here would silently black-hole anything this program
 * misjudges (e.g. a header it does not know). They are counted in
 * STAT_MALFORMED.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "parsing.h"

static __always_inline void count(__u32 stat)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &stat);

	if (c)
		*c += 1;
}

static __always_inline int pass(__u32 stat)
{
	count(stat);
	return XDP_PASS;
}

/* A handover hold is running (maps.h: hold_until). */
static __always_inline int holding(void)
{
	__u32 zero = 0;
	__u64 *until = bpf_map_lookup_elem(&hold_until, &zero);

	return until && *until && bpf_ktime_get_ns() < *until;
}

SEC("xdp")
int afgate_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct steer_cfg *conf;
	__u32 zero = 0;
	void *l3;
	__u16 proto;
	long act;

	if (eth + 1 > data_end)
		return pass(STAT_MALFORMED);

	proto = bpf_ntohs(eth->h_proto);
	if (proto == AFG_ETH_P_SLOW)
		return pass(STAT_PASS_LACP);
	if (is_link_local(eth->h_dest))
		return pass(STAT_PASS_LINK_LOCAL);

	conf = bpf_map_lookup_elem(&cfg, &zero);
	if (conf && (conf->flags & STEER_ONLY_OWN_MAC) &&
	    !is_multicast(eth->h_dest) && !mac_eq(eth->h_dest, conf->own_mac))
		return pass(STAT_PASS_OTHER_MAC);

	l3 = eth + 1;
	if (proto == AFG_ETH_P_8021Q || proto == AFG_ETH_P_8021AD) {
		struct afg_vlan_hdr *vh = l3;

		if (vh + 1 > data_end)
			return pass(STAT_MALFORMED);
		proto = bpf_ntohs(vh->encap_proto);
		l3 = vh + 1;
	}

	if (proto == AFG_ETH_P_IP) {
		switch (parse_ipv4(l3, data_end)) {
		case PARSE_KERNEL:
			return pass(STAT_PASS_RULE);
		case PARSE_MALFORMED:
			return pass(STAT_MALFORMED);
		default:
			break;
		}
	}

	/* Lower bits of the flags: the action when the slot is empty. */
	act = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	if (act == XDP_REDIRECT) {
		count(STAT_REDIRECT);
		return act;
	}
	if (holding()) {
		count(STAT_HELD_DROP);
		return XDP_DROP;
	}
	return pass(STAT_PASS_NO_SOCKET);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
