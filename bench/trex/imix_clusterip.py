"""TRex STL profile: simple IMIX (7:4:1 of 64/594/1518-byte frames) of UDP to 10.96.10.1:80,
1024 source ports. `start -f bench/trex/imix_clusterip.py -m 5gbps -d 30`."""
from trex_stl_lib.api import (STLProfile, STLStream, STLTXCont, STLPktBuilder, STLVM,
                              Ether, IP, UDP)


class STLImix:
    def get_streams(self, direction=0, **kwargs):
        streams = []
        for size, pps in ((64, 28), (594, 16), (1518, 4)):
            base = Ether() / IP(src="10.186.200.10", dst="10.96.10.1") / UDP(sport=1024, dport=80)
            pad = max(0, size - 4 - len(base)) * b"x"
            vm = STLVM()
            vm.var(name="sport", min_value=1024, max_value=2047, size=2, op="random")
            vm.write(fv_name="sport", pkt_offset="UDP.sport")
            vm.fix_chksum()
            streams.append(STLStream(packet=STLPktBuilder(pkt=base / pad, vm=vm),
                                     mode=STLTXCont(pps=pps)))
        return streams


def register():
    return STLImix()
