/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Structures shared with userspace. Every struct here has a #[repr(C)]
 * mirror in bpf/src/steer.rs with compile-time size/offset asserts, and the
 * Rust side also asserts its size against the skeleton's BTF-generated type.
 * Must be kept in sync by hand (as Katran's BalancerStructs.h).
 */
#ifndef AFGATE_STRUCTS_H
#define AFGATE_STRUCTS_H

#include <linux/types.h>

/* Value of the one-entry `cfg` map. Mirror: `SteerCfgRaw`, 8 bytes. */
struct steer_cfg {
	__u8 own_mac[6];
	/* STEER_* flags from consts.h */
	__u16 flags;
};

/*
 * Key of the `passthru` map: IPv4 destination (addr, port, proto) the
 * kernel owns. port == 0 means any port, proto == 0 means any protocol.
 * Mirror: `PassKeyRaw`, 8 bytes.
 */
struct pass_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad; /* always 0: part of the hash key */
};

/* One 802.1Q/802.1ad tag as it sits after the MAC addresses. */
struct afg_vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* First four bytes of TCP, UDP and SCTP: the ports. */
struct afg_l4_ports {
	__be16 source;
	__be16 dest;
};

#endif /* AFGATE_STRUCTS_H */
