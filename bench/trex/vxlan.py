"""TRex STL profile: VXLAN (VNI 2) from a remote VTEP to the afgate node's ctl address, inner
64-byte UDP from a remote overlay pod (10.20.4.0/25) to ClusterIP 10.96.10.1:80 — what the
seeds' vxlan.2 carries. The outer UDP source port varies per flow (RFC 7348 §5 entropy).

    start -f bench/trex/vxlan.py -m 2mpps -d 30 -t flows=4096
"""
from trex_stl_lib.api import (STLStream, STLTXCont, STLPktBuilder, STLVM, Ether, IP, UDP)
from scapy.layers.vxlan import VXLAN


class STLVxlan:
    def get_streams(self, direction=0, flows=1024, **kwargs):
        flows = min(int(flows), 60000)
        inner = Ether() / IP(src="10.20.4.10", dst="10.96.10.1") / UDP(sport=1024, dport=80)
        inner = inner / (max(0, 60 - len(inner)) * b"x")
        pkt = (Ether() / IP(src="10.186.152.104", dst="10.186.152.103") /
               UDP(sport=49152, dport=4789, chksum=0) / VXLAN(vni=2) / inner)
        vm = STLVM()
        vm.var(name="f", min_value=0, max_value=flows - 1, size=2, op="inc")
        vm.write(fv_name="f", pkt_offset=34, add_val=49152)          # outer UDP sport
        vm.write(fv_name="f", pkt_offset=34 + 8 + 8 + 14 + 20, add_val=1024)  # inner sport
        vm.fix_chksum()
        return [STLStream(packet=STLPktBuilder(pkt=pkt, vm=vm), mode=STLTXCont())]


def register():
    return STLVxlan()
