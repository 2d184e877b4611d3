//! Ids in the text form Tempo gives them.

use std::fmt::Write;

/// A trace id as Tempo prints it: lower-case hex without leading zeros (`"0"` when all zero).
pub fn trace_id_hex(id: &[u8]) -> String {
    let mut hex = String::with_capacity(id.len() * 2);
    for b in id {
        let _ = write!(hex, "{b:02x}");
    }
    match hex.trim_start_matches('0') {
        "" => "0".into(),
        trimmed if trimmed.len() == hex.len() => hex,
        trimmed => trimmed.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_lose_their_leading_zeros() {
        let mut id = [0u8; 16];
        assert_eq!(trace_id_hex(&id), "0");
        id[15] = 0x0a;
        assert_eq!(trace_id_hex(&id), "a");
        id[0] = 0xab;
        assert_eq!(trace_id_hex(&id), "ab00000000000000000000000000000a");
        id[0] = 0x0b;
        assert_eq!(trace_id_hex(&id), "b00000000000000000000000000000a");
    }
}
