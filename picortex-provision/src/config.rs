//! The operator's configuration as the helper reads it: `CONFIG_PATH` (defined in `egress`,
//! which picortexd shares for `--check-config`), read once per call and bounded; a missing file
//! means the defaults. Each concern parses its own part of that one snapshot (`egress::parse`
//! and `disk::parse` the `[sandbox]` table, `view::agent_table` the `[agent]` table), so a call
//! never mixes two versions of the file.

use std::io::Read;
use std::path::Path;

use crate::egress::CONFIG_PATH;

/// The file is small; anything larger is refused, as picortex-run does.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The text of the operator's configuration; empty when there is none.
pub fn read() -> Result<String, String> {
    read_from(Path::new(CONFIG_PATH))
}

pub fn read_from(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(format!("{shown}: {e}")),
    };
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{shown}: {e}"))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!("{shown} is larger than {MAX_CONFIG_BYTES} bytes"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_missing_file_is_the_defaults_and_a_huge_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("picortexd.toml");
        assert_eq!(read_from(&p), Ok(String::new()));
        std::fs::write(&p, "[sandbox]\negress = \"internet\"\n").unwrap();
        assert_eq!(read_from(&p).unwrap(), "[sandbox]\negress = \"internet\"\n");
        std::fs::write(&p, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        let e = read_from(&p).unwrap_err();
        assert!(e.contains("is larger than"), "{e}");
        // Not valid UTF-8: an error naming the file, not a panic.
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(read_from(&p).unwrap_err().contains("picortexd.toml"));
    }
}
