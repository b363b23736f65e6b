"""TRex STL profile: 64-byte UDP to ClusterIP 10.96.10.1:80 from many flows.

    start -f bench/trex/udp64_clusterip.py -m 10mpps -d 30 -t flows=65536

Flows vary the source port (1024..) and then the source address (10.186.200.0/16 from .10),
the same tuple layout `afgate-bench gen` uses. Always bounded by `-d SECONDS`.
"""
from trex_stl_lib.api import (STLProfile, STLStream, STLTXCont, STLPktBuilder, STLVM,
                              Ether, IP, UDP)


class STLS1:
    def get_streams(self, direction=0, flows=1024, size=64, **kwargs):
        flows = int(flows)
        ports = min(flows, 60000)
        addrs = max(1, (flows + ports - 1) // ports)
        base = Ether() / IP(src="10.186.200.10", dst="10.96.10.1") / UDP(sport=1024, dport=80)
        pad = max(0, int(size) - 4 - len(base)) * b"x"
        vm = STLVM()
        vm.var(name="sport", min_value=1024, max_value=1024 + ports - 1, size=2, op="inc")
        vm.write(fv_name="sport", pkt_offset="UDP.sport")
        if addrs > 1:
            vm.var(name="src", min_value="10.186.200.10", max_value=_ip_add("10.186.200.10", addrs - 1),
                   size=4, op="inc", step=1)
            vm.write(fv_name="src", pkt_offset="IP.src")
        vm.fix_chksum()
        return [STLStream(packet=STLPktBuilder(pkt=base / pad, vm=vm), mode=STLTXCont())]


def _ip_add(ip, n):
    a = [int(x) for x in ip.split(".")]
    v = (a[0] << 24 | a[1] << 16 | a[2] << 8 | a[3]) + n
    return ".".join(str((v >> s) & 255) for s in (24, 16, 8, 0))


def register():
    return STLS1()
