//! WAL positions (LSNs) in their `X/Y` text form, as `pg_current_wal_lsn()` and friends print them.

/// Parse `X/Y` (hex halves) into a number; `None` for anything else.
pub fn parse(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The `X/Y` text form of an LSN.
pub fn text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lsn_text_round_trips() {
        assert_eq!(super::parse("0/16B3748"), Some(0x16B3748));
        assert_eq!(super::parse("1/0"), Some(1 << 32));
        assert_eq!(super::parse("x"), None);
        assert_eq!(super::text(0x1_0000_00AB), "1/AB");
        assert_eq!(super::parse(&super::text(0xDEAD_BEEF_0123)), Some(0xDEAD_BEEF_0123));
    }
}
