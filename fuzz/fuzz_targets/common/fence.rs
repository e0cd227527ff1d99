//! An independent statement of the helper's egress rule, for the targets that parse `[sandbox]`:
//! no allowed range may share an address with loopback or link-local, whatever its prefix.

/// Whether prefix `a/alen` and prefix `b/blen` (as integers of one width) share an address:
/// they agree on the shorter prefix.
fn overlap(a: u128, alen: u32, b: u128, blen: u32, width: u32) -> bool {
    let l = alen.min(blen);
    let mask = if l == 0 {
        0
    } else {
        (u128::MAX << (128 - l)) >> (128 - width)
    };
    a & mask == b & mask
}

pub fn assert_not_host(r: &(i32, Vec<u8>, u32)) {
    let (family, addr, len) = r;
    let (width, never): (u32, &[(u128, u32)]) = match family {
        2 => (32, &[(0x7f00_0000, 8), (0xa9fe_0000, 16)]),
        10 => (128, &[(1, 128), (0xfe80 << 112, 10)]),
        f => panic!("unknown address family {f}"),
    };
    assert_eq!(addr.len() as u32 * 8, width, "{r:?}");
    assert!(*len <= width, "{r:?}");
    let a = addr.iter().fold(0u128, |n, b| n << 8 | u128::from(*b));
    for (net, nlen) in never {
        assert!(
            !overlap(a, *len, *net, *nlen, width),
            "allowlist range {r:?} opens the host or link-local"
        );
    }
}
