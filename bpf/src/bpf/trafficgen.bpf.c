// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The benchmark's in-kernel traffic generator (loader: bpf/src/trafficgen.rs).
 *
 * Run by BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES over one template
 * frame (Ethernet / IPv4 without options / UDP, built by afgate-bench's
 * packet.rs for flow 0, sequence 0, timestamp 0): every run stamps the next
 * packet and returns XDP_TX, which the test-run code turns into a redirect
 * out of the ingress device. That keeps the whole per-packet cost in one
 * kernel loop, with no ring, copy or syscall per frame.
 *
 * Packet k is flow k % flows with sequence k / flows, as in the AF_XDP
 * generator, so the sink checks order per flow without per-flow state here.
 *
 * Live-frame pages are recycled without being re-initialised, so a frame
 * may hold an earlier packet's stamp: every varying field is written
 * absolutely and both checksums are derived from the template's values
 * (in `cfg`), never from what the page holds.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Set before load. Multi-byte fields are in host order unless named _be. */
const volatile __u32 flows = 1;
/* Source ports before the source address steps (>= 1). */
const volatile __u32 sports = 1;
const volatile __u32 src_ip = 0;	/* of flow 0 */
const volatile __u16 sport_base = 0;
/* The template's checksums as they are on the wire (big-endian bytes,
 * read as a host u16), for flow 0 with a zero stamp. */
const volatile __u16 ip_csum_be = 0;
const volatile __u16 udp_csum_be = 0;

/* Packets stamped so far. One caller thread runs the program at a time
 * (the loader serialises), so a plain global is exact where a per-CPU
 * counter would repeat sequence numbers after a migration. */
__u64 next_pkt = 0;

#define STAMP_MAGIC 0xafb3

/* One's-complement sum of the 16-bit halves of a big-endian 32-bit word. */
static __always_inline __u32 add32(__u32 sum, __u32 v_be)
{
	return sum + (v_be & 0xffff) + (v_be >> 16);
}

static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

SEC("xdp")
int afg_trafficgen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u8 *p = (void *)(udp + 1);

	/* magic:u16 flow:u32 seq:u32 ts:u32 */
	if (p + 14 > (__u8 *)data_end)
		return XDP_ABORTED;

	__u64 k = next_pkt++;
	__u32 nflows = flows ? flows : 1;
	__u32 nsports = sports ? sports : 1;
	__u32 flow = (__u32)(k % nflows);
	__u32 seq = (__u32)(k / nflows);
	__u32 ts = (__u32)bpf_ktime_get_ns();
	__u32 src_be = bpf_htonl(src_ip + flow / nsports);
	__u16 sport_be = bpf_htons((__u16)(sport_base + flow % nsports));
	__u32 flow_be = bpf_htonl(flow), seq_be = bpf_htonl(seq), ts_be = bpf_htonl(ts);
	__u32 base_src_be = bpf_htonl(src_ip);
	__u16 base_sport_be = bpf_htons(sport_base);

	/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), with m the template's field. */
	__u32 ipsum = (__u16)~ip_csum_be;
	ipsum = add32(ipsum, ~base_src_be);
	ipsum = add32(ipsum, src_be);
	ip->check = (__u16)~fold(ipsum);
	ip->saddr = src_be;

	__u32 usum = (__u16)~udp_csum_be;
	usum = add32(usum, ~base_src_be);
	usum = add32(usum, src_be);
	usum += (__u16)~base_sport_be;
	usum += sport_be;
	/* The template's stamp words are zero: nothing to take out. */
	usum = add32(usum, flow_be);
	usum = add32(usum, seq_be);
	usum = add32(usum, ts_be);
	__u16 ucsum = (__u16)~fold(usum);
	udp->source = sport_be;
	/* A computed 0 goes out as 0xffff: 0 means "no checksum" (RFC 768). */
	udp->check = ucsum ? ucsum : 0xffff;

	/* The payload is only 2-byte aligned. */
	p[0] = STAMP_MAGIC >> 8;
	p[1] = STAMP_MAGIC & 0xff;
	__builtin_memcpy(p + 2, &flow_be, 4);
	__builtin_memcpy(p + 6, &seq_be, 4);
	__builtin_memcpy(p + 10, &ts_be, 4);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
