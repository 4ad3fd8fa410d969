//! Weighted spread: the server list a shard goes round, built so that each server gets its
//! weight's share of connects, interleaved (nginx's smooth weighted round-robin), not in runs.

use std::net::SocketAddr;

/// The largest weight honoured; a larger registered weight counts as this (it bounds the
/// rotation's length, and no real deployment weighs one server 100 times another).
pub const MAX_WEIGHT: u32 = 100;

/// One server and its registered weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weighted {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Its share of connects relative to the others (0 counts as 1, above
    /// [`MAX_WEIGHT`] as [`MAX_WEIGHT`]).
    pub weight: u32,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The rotation: every server appears `weight / g` times (g the weights' common divisor), as
/// evenly spread as smooth weighted round-robin makes it. Duplicates are merged (their weights
/// add up). Empty in, empty out.
pub fn rotation(servers: &[Weighted]) -> Vec<SocketAddr> {
    let mut merged: Vec<Weighted> = Vec::new();
    for s in servers {
        let w = s.weight.clamp(1, MAX_WEIGHT);
        match merged.iter_mut().find(|m| m.addr == s.addr) {
            Some(m) => m.weight = (m.weight + w).min(MAX_WEIGHT),
            None => merged.push(Weighted { weight: w, ..*s }),
        }
    }
    let g = merged.iter().fold(0, |g, s| gcd(g, s.weight)).max(1);
    let weights: Vec<i64> = merged.iter().map(|s| i64::from(s.weight / g)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; merged.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let Some(best) = (0..current.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
        else {
            break;
        };
        current[best] -= total;
        out.push(merged[best].addr);
    }
    out
}

/// `a:1 b:2 ...`: each server in a rotation and how many turns it has (for logs).
pub fn describe(rotation: &[SocketAddr]) -> String {
    let mut counts: Vec<(SocketAddr, usize)> = Vec::new();
    for a in rotation {
        match counts.iter_mut().find(|(b, _)| b == a) {
            Some((_, n)) => *n += 1,
            None => counts.push((*a, 1)),
        }
    }
    counts.sort();
    let parts: Vec<String> = counts.iter().map(|(a, n)| format!("{a}x{n}")).collect();
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(port: u16, weight: u32) -> Weighted {
        Weighted {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
        }
    }

    fn count(r: &[SocketAddr], port: u16) -> usize {
        r.iter().filter(|a| a.port() == port).count()
    }

    #[test]
    fn equal_weights_alternate() {
        let r = rotation(&[w(1, 1), w(2, 1)]);
        assert_eq!(r.len(), 2);
        assert_ne!(r[0], r[1]);
        assert_eq!(
            rotation(&[w(1, 5), w(2, 5)]).len(),
            2,
            "common divisor removed"
        );
    }

    #[test]
    fn weights_give_shares_interleaved() {
        let r = rotation(&[w(1, 3), w(2, 1)]);
        assert_eq!((count(&r, 1), count(&r, 2)), (3, 1));
        let r = rotation(&[w(1, 2), w(2, 1), w(3, 1)]);
        assert_eq!(r.len(), 4);
        // Smooth: the heavy server never gets two turns in a row here.
        assert!(r.windows(2).all(|p| p[0] != p[1]), "{r:?}");
    }

    #[test]
    fn odd_weights_are_bounded_and_duplicates_merged() {
        let r = rotation(&[w(1, 0), w(2, u32::MAX)]);
        assert_eq!((count(&r, 1), count(&r, 2)), (1, MAX_WEIGHT as usize));
        let r = rotation(&[w(1, 1), w(1, 1), w(2, 1)]);
        assert_eq!((count(&r, 1), count(&r, 2)), (2, 1));
        assert!(rotation(&[]).is_empty());
    }
}
