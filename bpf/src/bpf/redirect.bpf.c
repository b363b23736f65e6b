// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The in-kernel ceiling for benchmarks (loader: bpf/src/redirect.rs):
 * afg_devmap_fwd forwards every frame to the one device in
 * `tx_port` without leaving the driver, which is what afgate's userspace
 * forwarder is measured against.
 *
 * afgate_xdp_pass only returns XDP_PASS. veth's ndo_xdp_xmit delivers into
 * the peer's XDP rx ring, which exists only while the peer (the receiving
 * side) has an XDP program (or GRO-enabled NAPI); some NIC drivers likewise
 * need a program on the egress device. Attach it there.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

/* Set before load: swap source and destination MAC (a reflector / 2-port
 * forwarder that makes the next hop accept the frame). */
const volatile __u8 swap_mac = 0;

/* The egress device: key 0 -> ifindex. Written by userspace before attach. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} tx_port SEC(".maps");

SEC("xdp")
int afg_devmap_fwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if (swap_mac) {
		__u8 tmp[ETH_ALEN];

		if (eth + 1 > data_end)
			return XDP_PASS;
		__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
		__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	}
	/* Empty slot: hand the frame to the kernel rather than drop it. */
	return bpf_redirect_map(&tx_port, 0, XDP_PASS);
}

SEC("xdp")
int afgate_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
