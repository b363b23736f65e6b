/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Header parsing for afgate_steer. Every access is preceded by an
 * `if (hdr + 1 > data_end)` check. The parse result uses the three outcomes
 * of STYLE §2: ours (dataplane), kernel's, malformed.
 */
#ifndef AFGATE_PARSING_H
#define AFGATE_PARSING_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"

enum parse_verdict {
	/* Not the kernel's: steer to the AF_XDP socket. */
	PARSE_OURS = 0,
	/* Matched a passthru rule: the kernel's. */
	PARSE_KERNEL = 1,
	/* Truncated or invalid header. */
	PARSE_MALFORMED = 2,
};

/* 01:80:c2:00:00:00..0f, IEEE 802.1D reserved: STP, LLDP, pause, 802.1X. */
static __always_inline int is_link_local(const __u8 *mac)
{
	return mac[0] == 0x01 && mac[1] == 0x80 && mac[2] == 0xc2 &&
	       mac[3] == 0x00 && mac[4] == 0x00 && (mac[5] & 0xf0) == 0x00;
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] &&
	       a[4] == b[4] && a[5] == b[5];
}

/* Group bit: broadcast and multicast destinations. */
static __always_inline int is_multicast(const __u8 *mac)
{
	return mac[0] & 0x01;
}

static __always_inline int passthru_has(struct pass_key *key)
{
	return bpf_map_lookup_elem(&passthru, key) != NULL;
}

/*
 * IPv4 header at l3: is its destination one the kernel owns?
 * Lookup order: (addr, port, proto), (addr, 0, proto), (addr, 0, 0).
 * Non-first fragments carry no ports and only match the last two.
 */
static __always_inline enum parse_verdict parse_ipv4(void *l3, void *data_end)
{
	struct iphdr *ip = l3;
	struct pass_key key = {};
	__u32 ihl;

	if (ip + 1 > data_end)
		return PARSE_MALFORMED;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return PARSE_MALFORMED;

	key.addr = ip->daddr;
	key.proto = ip->protocol;

	if ((ip->protocol == AFG_IPPROTO_TCP || ip->protocol == AFG_IPPROTO_UDP ||
	     ip->protocol == AFG_IPPROTO_SCTP) &&
	    !(ip->frag_off & bpf_htons(AFG_IP_OFFSET))) {
		struct afg_l4_ports *ports = l3 + ihl;

		if (ports + 1 > data_end)
			return PARSE_MALFORMED;
		key.port = ports->dest;
		if (passthru_has(&key))
			return PARSE_KERNEL;
		key.port = 0;
	}
	if (passthru_has(&key))
		return PARSE_KERNEL;
	key.proto = 0;
	if (passthru_has(&key))
		return PARSE_KERNEL;
	return PARSE_OURS;
}

#endif /* AFGATE_PARSING_H */
