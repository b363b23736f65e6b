/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Maps of afgate_steer (steer.bpf.c). Userspace: bpf/src/steer.rs. */
#ifndef AFGATE_MAPS_H
#define AFGATE_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"

/*
 * AF_XDP sockets of this port, key = rx queue index, value = socket fd
 * (written by userspace, read back as the socket). An empty slot makes
 * bpf_redirect_map() return its XDP_PASS fallback: with no dataplane
 * bound (not started, crashed, SIGKILLed) every frame goes to the kernel.
 */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, AFG_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

/* Per-port configuration, one entry (key 0), written before attach. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_cfg);
} cfg SEC(".maps");

/*
 * IPv4 destinations the kernel owns (node address + TCP 22, ...).
 * Looked up as (addr, port, proto), then (addr, 0, proto), then (addr, 0, 0).
 * Value unused (presence is the rule); u8 for a future per-rule action.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AFG_MAX_PASSTHRU);
	__type(key, struct pass_key);
	__type(value, __u8);
} passthru SEC(".maps");

/*
 * Handover hold, one entry (key 0): a bpf_ktime_get_ns() deadline, 0 = off.
 * While now < deadline, frames for the dataplane whose queue has no socket
 * are dropped instead of passed (a restarting afgate sets it in its
 * predecessor's instance for the socket gap, then clears it). A deadline,
 * not a flag, so that it lapses by itself if the new afgate dies mid-handover
 * and the fail-open fallback returns without anyone clearing it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} hold_until SEC(".maps");

/* Verdict counters, index = enum steer_stat, summed over CPUs by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

#endif /* AFGATE_MAPS_H */
