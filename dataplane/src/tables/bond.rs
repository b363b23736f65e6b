//! Bonds: several uplink ports acting as one (seeds: `bond0` = two NICs, LACP). The bond is
//! a logical port that routes and addresses name; its members are physical ports that share
//! its MAC. Which members are up is part of the snapshot: the control thread polls their
//! carrier and publishes a new snapshot when it changes, and the flows of a lost member
//! rehash onto the others.

use super::ports::PortId;

/// How a flow picks its member (Linux `xmit_hash_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BondHash {
    /// Addresses and ports (`layer3+4`): one TCP/UDP flow stays on one member, many flows
    /// between the same two hosts spread.
    #[default]
    Layer34,
    /// Addresses only (`layer3+4` without ports; Linux `layer2+3` minus the MACs).
    Layer3,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bond {
    pub port: PortId,
    pub members: Vec<PortId>,
    /// The members whose link is up, in configuration order; egress picks among these.
    pub up: Vec<PortId>,
    pub hash: BondHash,
}

impl Bond {
    /// The member for a flow with hash `hash`, or `None` if every member is down.
    #[inline]
    pub fn select(&self, hash: u32) -> Option<PortId> {
        match self.up.len() {
            0 => None,
            1 => self.up.first().copied(),
            n => self
                .up
                .get(((hash as u64 * n as u64) >> 32) as usize)
                .copied(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Bonds {
    pub bonds: Vec<Bond>,
}

impl Bonds {
    #[inline]
    pub fn get(&self, index: u16) -> Option<&Bond> {
        self.bonds.get(usize::from(index))
    }

    /// Marks `member` up or down in every bond that has it; true if anything changed.
    pub fn set_member_up(&mut self, member: PortId, up: bool) -> bool {
        let mut changed = false;
        for b in &mut self.bonds {
            if !b.members.contains(&member) || b.up.contains(&member) == up {
                continue;
            }
            changed = true;
            if up {
                let order = &b.members;
                b.up.push(member);
                b.up.sort_by_key(|m| order.iter().position(|x| x == m));
            } else {
                b.up.retain(|m| *m != member);
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_member_flows_move_to_the_others() {
        let mut bonds = Bonds {
            bonds: vec![Bond {
                port: PortId(5),
                members: vec![PortId(0), PortId(1)],
                up: vec![PortId(0), PortId(1)],
                hash: BondHash::Layer34,
            }],
        };
        let b = &bonds.bonds[0];
        assert_eq!(b.select(0), Some(PortId(0)));
        assert_eq!(b.select(u32::MAX), Some(PortId(1)));
        assert!(bonds.set_member_up(PortId(1), false));
        assert!(!bonds.set_member_up(PortId(1), false));
        assert_eq!(bonds.bonds[0].select(u32::MAX), Some(PortId(0)));
        assert!(bonds.set_member_up(PortId(0), false));
        assert_eq!(bonds.bonds[0].select(7), None);
        assert!(bonds.set_member_up(PortId(1), true));
        assert!(bonds.set_member_up(PortId(0), true));
        assert_eq!(bonds.bonds[0].up, vec![PortId(0), PortId(1)]);
    }
}
