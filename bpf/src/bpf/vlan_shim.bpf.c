// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * A tc clsact 802.1Q access-port shim for the lab (loader:
 * bpf/src/vlan_shim.rs). The lab kernel has no 8021q module, so a peer that
 * must sit on VLAN `vid` of a trunk gets these two filters on its veth:
 *   egress  afg_vlan_push: tag every frame with `vid`;
 *   ingress afg_vlan_pop:  frames tagged `vid` (or priority-tagged,
 *                             vid 0) lose the tag, frames tagged with
 *                             another vid are dropped, untagged ones pass.
 *
 * The tag can be in either of two places: in skb->vlan_tci (hw-accel style,
 * where the receive path's skb_vlan_untag() and bpf_skb_vlan_push() put it)
 * or still in the frame bytes. Ingress checks both.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "structs.h"

/* The access VLAN id, 1..4094; set by userspace before load. */
const volatile __u16 vid = 0;

SEC("tc")
int afg_vlan_push(struct __sk_buff *skb)
{
	if (bpf_skb_vlan_push(skb, bpf_htons(AFG_ETH_P_8021Q), vid) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* Tagged with vid, or priority-tagged: ours to untag. */
static __always_inline int vid_is_ours(__u16 tci)
{
	__u16 v = tci & AFG_VLAN_VID_MASK;

	return v == vid || v == 0;
}

SEC("tc")
int afg_vlan_pop(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u16 proto;

	/* Hw-accel style: the tag already left the bytes. */
	if (skb->vlan_present) {
		if (!vid_is_ours(skb->vlan_tci))
			return TC_ACT_SHOT;
		return bpf_skb_vlan_pop(skb) < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	}

	/* Too short for an Ethernet header: not ours to judge. */
	if (eth + 1 > data_end)
		return TC_ACT_OK;
	proto = bpf_ntohs(eth->h_proto);
	if (proto != AFG_ETH_P_8021Q && proto != AFG_ETH_P_8021AD)
		return TC_ACT_OK;

	{
		struct afg_vlan_hdr *vh = (void *)(eth + 1);

		if (vh + 1 > data_end)
			return TC_ACT_SHOT;
		if (!vid_is_ours(bpf_ntohs(vh->tci)))
			return TC_ACT_SHOT;
	}
	return bpf_skb_vlan_pop(skb) < 0 ? TC_ACT_SHOT : TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
