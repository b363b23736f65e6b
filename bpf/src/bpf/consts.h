/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Constants shared by afgate's BPF programs. Values that userspace also uses
 * (flags, counter indexes, map sizes) are mirrored in `bpf/src/steer.rs`;
 * keep both in sync (the Rust side checks the map sizes at load time).
 */
#ifndef AFGATE_CONSTS_H
#define AFGATE_CONSTS_H

/*
 * Program names are at most 15 characters: the kernel keeps 15
 * (BPF_OBJ_NAME_LEN) and `bpftool`, `ip link` and `tc filter show` would
 * show a truncated name otherwise.
 */

/* Ethertypes not (or not reliably) in <linux/if_ether.h>. */
#define AFG_ETH_P_IP 0x0800
#define AFG_ETH_P_8021Q 0x8100
#define AFG_ETH_P_8021AD 0x88A8
/* IEEE 802.3 Slow Protocols (LACP, marker): the bond's control plane. */
#define AFG_ETH_P_SLOW 0x8809

#define AFG_IPPROTO_TCP 6
#define AFG_IPPROTO_UDP 17
#define AFG_IPPROTO_SCTP 132

/* IPv4 fragment offset mask (host order, before bpf_ntohs). */
#define AFG_IP_OFFSET 0x1FFF

/* VLAN TCI: 12-bit VLAN id. */
#define AFG_VLAN_VID_MASK 0x0FFF

/* Max AF_XDP sockets per port: one per rx queue. */
#define AFG_MAX_QUEUES 64
/* Max entries of the passthru (kernel-owned traffic) table. */
#define AFG_MAX_PASSTHRU 1024

/* struct steer_cfg.flags */
/* Pass unicast frames whose destination MAC is not own_mac to the kernel. */
#define STEER_ONLY_OWN_MAC (1 << 0)

/*
 * Verdict counters of afgate_steer, indexes into the `stats` map.
 * Mirror: `SteerStat` in bpf/src/steer.rs.
 */
enum steer_stat {
	/* Frame handed to the AF_XDP socket bound to its rx queue. */
	STAT_REDIRECT = 0,
	/* Slow protocols (LACP) go to the kernel's bonding driver. */
	STAT_PASS_LACP = 1,
	/* 01:80:c2:00:00:0x (STP, LLDP, 802.1X, ...) go to the kernel. */
	STAT_PASS_LINK_LOCAL = 2,
	/* Unicast for another MAC while STEER_ONLY_OWN_MAC is set. */
	STAT_PASS_OTHER_MAC = 3,
	/* IPv4 traffic matching a passthru rule (kernel-owned, e.g. SSH). */
	STAT_PASS_RULE = 4,
	/* No AF_XDP socket bound on this queue: the XDP_PASS fallback. */
	STAT_PASS_NO_SOCKET = 5,
	/* Truncated headers; passed to the kernel (fail-open), see steer.bpf.c. */
	STAT_MALFORMED = 6,
	/*
	 * No socket on this queue during a handover hold (hold_until in the
	 * future): dropped, not passed, so that a forwarding or NAT-owning
	 * kernel cannot reset the flows the next afgate keeps.
	 */
	STAT_HELD_DROP = 7,
	STAT_MAX = 8,
};

#endif /* AFGATE_CONSTS_H */
