//! Who the owner is (SPEC §1 "Who is who", W1): the handles in `[owner] handles`, and nobody
//! else. Every authority check — quarantine, approvals, in-chat commands — asks `Owner`, and
//! handles are compared in one normal form so "+1 (555) 000-2000" and "+15550002000", or two
//! spellings of an email address, are the same person.

/// A handle in its normal form: emails lower-cased; phone numbers reduced to `+` and digits.
pub fn normalize(handle: &str) -> String {
    let h = handle.trim();
    if h.contains('@') {
        return h.to_lowercase();
    }
    let digits: String = h.chars().filter(char::is_ascii_digit).collect();
    if h.starts_with('+') {
        format!("+{digits}")
    } else {
        digits
    }
}

/// The owner's handles, normalised once.
#[derive(Debug, Clone, Default)]
pub struct Owner {
    handles: Vec<String>,
}

impl Owner {
    pub fn new(handles: &[String]) -> Self {
        Self {
            handles: handles.iter().map(|h| normalize(h)).collect(),
        }
    }

    pub fn is_owner(&self, handle: &str) -> bool {
        let h = normalize(handle);
        !h.is_empty() && self.handles.contains(&h)
    }

    /// Whether any of `handles` is the owner's.
    pub fn any<'a>(&self, mut handles: impl Iterator<Item = &'a str>) -> bool {
        handles.any(|h| self.is_owner(h))
    }

    /// The handle notices go to when the owner has no DM with the bot yet: the first configured.
    pub fn primary(&self) -> Option<&str> {
        self.handles.first().map(String::as_str)
    }

    pub fn is_configured(&self) -> bool {
        !self.handles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_handle_are_one_owner() {
        let o = Owner::new(&["+1 (555) 000-2000".into(), "Jacob@Example.com".into()]);
        assert!(o.is_owner("+15550002000"));
        assert!(o.is_owner(" jacob@example.COM "));
        assert!(!o.is_owner("+15550002001"));
        assert!(!o.is_owner("15550002000"), "a missing + is another number");
        assert!(!o.is_owner(""));
        assert_eq!(o.primary(), Some("+15550002000"));
    }

    #[test]
    fn nobody_is_the_owner_of_an_unconfigured_gateway() {
        let o = Owner::new(&[]);
        assert!(!o.is_owner("+15550002000"));
        assert!(!o.is_configured());
    }
}
