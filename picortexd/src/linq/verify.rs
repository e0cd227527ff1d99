//! Webhook signature verification (SPEC L1): Standard Webhooks (`webhook-id`/`-timestamp`/
//! `-signature`), falling back to Linq's legacy `X-Webhook-Signature` only when no `webhook-*`
//! header is present at all. Stateless: replay protection (dedup on the event id) and the body
//! size limit belong to the caller.

use std::fmt;
use std::time::Duration;

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Allowed clock skew between Linq's timestamp and ours, in either direction.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

const SECRET_PREFIX: &str = "whsec_";
const H_ID: &str = "webhook-id";
const H_TIMESTAMP: &str = "webhook-timestamp";
const H_SIGNATURE: &str = "webhook-signature";
const H_LEGACY_SIGNATURE: &str = "x-webhook-signature";
const H_LEGACY_TIMESTAMP: &str = "x-webhook-timestamp";

/// Which signature scheme authenticated a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    StandardWebhooks,
    Legacy,
}

/// An authenticated delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The `webhook-id` header (Standard Webhooks). `None` for the legacy scheme, which has no
    /// signed id: the caller then takes `event_id` from the (now authenticated) body.
    pub event_id: Option<String>,
    /// The signed unix timestamp, seconds.
    pub timestamp: i64,
    pub scheme: Scheme,
}

/// Why a delivery was refused. `Display` is a short operator-facing message; it never contains
/// the secret or a computed signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing webhook signature header")]
    MissingSignature,
    #[error("webhook signature does not match")]
    BadSignature,
    #[error(
        "webhook timestamp is {skew_secs}s away from local time (tolerance {tolerance_secs}s)"
    )]
    Stale { skew_secs: u64, tolerance_secs: u64 },
    #[error("malformed webhook headers: {0}")]
    Malformed(&'static str),
}

impl VerifyError {
    /// HTTP status to answer with: 401 for signature problems, 400 for malformed headers.
    pub fn status(&self) -> u16 {
        match self {
            VerifyError::Malformed(_) => 400,
            VerifyError::MissingSignature
            | VerifyError::BadSignature
            | VerifyError::Stale { .. } => 401,
        }
    }
}

/// The configured secret could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("webhook secret is empty")]
    Empty,
    #[error("webhook secret is not valid base64 after the `whsec_` prefix")]
    NotBase64,
}

/// Verifies deliveries for one webhook subscription secret.
#[derive(Clone)]
pub struct Verifier {
    /// Keyed with the base64-decoded part after `whsec_` (Standard Webhooks).
    mac: HmacSha256,
    /// Keyed with the whole secret string as UTF-8 (legacy; Linq's documented example).
    legacy_mac: HmacSha256,
    tolerance_secs: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("key", &"<redacted>")
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

impl Verifier {
    /// Builds a verifier from the subscription's signing secret (`whsec_<base64>`; the prefix is
    /// optional as in the Standard Webhooks libraries). Surrounding whitespace, such as the
    /// trailing newline of a credentials file, is ignored. Tolerance is [`DEFAULT_TOLERANCE`].
    pub fn new(secret: &str) -> Result<Self, SecretError> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(SecretError::Empty);
        }
        let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        let key = B64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        // HMAC accepts keys of any length, so these never fail; mapped anyway to stay panic-free.
        let mac = HmacSha256::new_from_slice(&key).map_err(|_| SecretError::Empty)?;
        let legacy_mac =
            HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| SecretError::Empty)?;
        Ok(Verifier {
            mac,
            legacy_mac,
            tolerance_secs: DEFAULT_TOLERANCE.as_secs(),
        })
    }

    /// Replaces the allowed timestamp skew.
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance_secs = tolerance.as_secs();
        self
    }

    /// Checks one delivery. `body` must be the raw bytes as received; `now_unix` is local time in
    /// unix seconds (a parameter so tests and callers control the clock).
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Verified, VerifyError> {
        let standard = [H_ID, H_TIMESTAMP, H_SIGNATURE]
            .iter()
            .any(|h| headers.contains_key(*h));
        if standard {
            self.verify_standard(headers, body, now_unix)
        } else {
            self.verify_legacy(headers, body, now_unix)
        }
    }

    fn verify_standard(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Verified, VerifyError> {
        let signatures = header_str(headers, H_SIGNATURE)?.ok_or(VerifyError::MissingSignature)?;
        let id = header_str(headers, H_ID)?.ok_or(VerifyError::Malformed("webhook-id missing"))?;
        let ts_raw = header_str(headers, H_TIMESTAMP)?
            .ok_or(VerifyError::Malformed("webhook-timestamp missing"))?;
        if id.is_empty() {
            return Err(VerifyError::Malformed("webhook-id empty"));
        }
        let timestamp = parse_timestamp(ts_raw)
            .ok_or(VerifyError::Malformed("webhook-timestamp not an integer"))?;

        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(ts_raw.as_bytes());
        mac.update(b".");
        mac.update(body);
        let expected = mac.finalize().into_bytes();

        // Space-separated `version,signature` entries; any valid v1 entry is enough. Entries of
        // other versions, and v1 entries that are not base64, are skipped rather than fatal so a
        // key rotation or a future scheme does not break us.
        let mut matched = false;
        for entry in signatures.split_whitespace() {
            let Some((version, sig)) = entry.split_once(',') else {
                continue;
            };
            if version != "v1" {
                continue;
            }
            let Ok(candidate) = B64.decode(sig) else {
                continue;
            };
            // Non-short-circuiting so timing does not reveal which entry matched.
            matched |= bool::from(candidate.as_slice().ct_eq(expected.as_slice()));
        }
        if !matched {
            return Err(VerifyError::BadSignature);
        }
        self.check_skew(timestamp, now_unix)?;
        Ok(Verified {
            event_id: Some(id.to_owned()),
            timestamp,
            scheme: Scheme::StandardWebhooks,
        })
    }

    fn verify_legacy(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Verified, VerifyError> {
        let sig = header_str(headers, H_LEGACY_SIGNATURE)?.ok_or(VerifyError::MissingSignature)?;
        let ts_raw = header_str(headers, H_LEGACY_TIMESTAMP)?
            .ok_or(VerifyError::Malformed("X-Webhook-Timestamp missing"))?;
        let timestamp = parse_timestamp(ts_raw)
            .ok_or(VerifyError::Malformed("X-Webhook-Timestamp not an integer"))?;
        let sig = sig.trim();
        let sig = sig.strip_prefix("sha256=").unwrap_or(sig);
        let candidate =
            hex::decode(sig).map_err(|_| VerifyError::Malformed("X-Webhook-Signature not hex"))?;

        let mut mac = self.legacy_mac.clone();
        mac.update(ts_raw.as_bytes());
        mac.update(b".");
        mac.update(body);
        // `verify_slice` compares in constant time.
        mac.verify_slice(&candidate)
            .map_err(|_| VerifyError::BadSignature)?;
        self.check_skew(timestamp, now_unix)?;
        Ok(Verified {
            event_id: None,
            timestamp,
            scheme: Scheme::Legacy,
        })
    }

    fn check_skew(&self, timestamp: i64, now_unix: i64) -> Result<(), VerifyError> {
        let skew = now_unix.saturating_sub(timestamp).unsigned_abs();
        if skew > self.tolerance_secs {
            return Err(VerifyError::Stale {
                skew_secs: skew,
                tolerance_secs: self.tolerance_secs,
            });
        }
        Ok(())
    }
}

/// A header as `&str`; `Ok(None)` when absent, `Malformed` when not visible ASCII.
fn header_str<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, VerifyError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| VerifyError::Malformed("header is not visible ASCII")),
    }
}

fn parse_timestamp(raw: &str) -> Option<i64> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderName, HeaderValue};

    /// Copy of `research/webhook-signature-vectors.json` (standardwebhooks 1.x for `v1`, hex
    /// HMAC keyed with the whole secret string for legacy).
    const VECTORS: &str = r#"{
 "vectors": [
  {
   "secret": "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
   "webhook_id": "2915e81c-5068-4796-ace2-21d2c94ad298",
   "webhook_timestamp": "1770319873",
   "body": "{\"api_version\":\"v3\",\"webhook_version\":\"2026-02-03\",\"event_type\":\"message.received\",\"event_id\":\"2915e81c-5068-4796-ace2-21d2c94ad298\",\"created_at\":\"2026-02-05T19:31:13.736444093Z\",\"trace_id\":\"8af9171a45022df2eb74ba4e4c83be0f\",\"partner_id\":\"p\",\"data\":{\"id\":\"89e3566e-1d13-49e5-a8ee-48490d5bfeb7\",\"direction\":\"inbound\",\"parts\":[{\"type\":\"text\",\"value\":\"Hello!\"}]}}",
   "webhook_signature": "v1,bSLjFyyK7kBeweAytyFm+2nhtcDPd9Q+fZQrMAg34ns=",
   "legacy_x_webhook_timestamp": "1770319873",
   "legacy_x_webhook_signature_hex": "892fc6dc255ce26960918bdd15b942df85ac081d5d614e1c58138f8679cae73b"
  },
  {
   "secret": "whsec_cGljb3J0ZXgtdGVzdC12ZWN0b3Itc2VjcmV0LTAwMDI=",
   "webhook_id": "5d1f0c0e-1111-4a4a-9b9b-000000000001",
   "webhook_timestamp": "1770319999",
   "body": "{\"event_type\":\"reaction.added\",\"event_id\":\"5d1f0c0e-1111-4a4a-9b9b-000000000001\",\"data\":{\"chat_id\":\"c\",\"message_id\":\"m\",\"reaction_type\":\"love\"}}",
   "webhook_signature": "v1,pf/rtUukafE6i1W2xSQkSfZYK5EFDHmaGlRg0myJPWo=",
   "legacy_x_webhook_timestamp": "1770319999",
   "legacy_x_webhook_signature_hex": "d365ba46f186498054c07892fdad74942c23a1ef847dcbd0747ed96fbfd6dfa9"
  },
  {
   "secret": "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
   "webhook_id": "msg_2",
   "webhook_timestamp": "1800000000",
   "body": "{\"text\":\"unicode ✓ — “quotes” and emoji 😀\"}",
   "webhook_signature": "v1,M/h4/haM1bcbWCg13EH2G3I4htpc/Jnaj4OAOWBxLe8=",
   "legacy_x_webhook_timestamp": "1800000000",
   "legacy_x_webhook_signature_hex": "57db2f6d456a2e8f32da308145126b1ad8dbdac3842a912b451bbb575f289668"
  }
 ]
}"#;

    struct Vector {
        secret: String,
        id: String,
        ts: String,
        body: String,
        sig: String,
        legacy_ts: String,
        legacy_hex: String,
    }

    impl Vector {
        fn now(&self) -> i64 {
            self.ts.parse().expect("vector timestamp")
        }
        fn verifier(&self) -> Verifier {
            Verifier::new(&self.secret).expect("vector secret")
        }
        fn standard_headers(&self) -> HeaderMap {
            headers(&[
                ("webhook-id", &self.id),
                ("webhook-timestamp", &self.ts),
                ("webhook-signature", &self.sig),
            ])
        }
        fn legacy_headers(&self, sig: &str) -> HeaderMap {
            headers(&[
                ("X-Webhook-Signature", sig),
                ("X-Webhook-Timestamp", &self.legacy_ts),
                ("X-Webhook-Event", "message.received"),
            ])
        }
    }

    fn vectors() -> Vec<Vector> {
        let v: serde_json::Value = serde_json::from_str(VECTORS).expect("fixture json");
        let s = |x: &serde_json::Value, k: &str| x[k].as_str().expect(k).to_owned();
        v["vectors"]
            .as_array()
            .expect("vectors")
            .iter()
            .map(|x| Vector {
                secret: s(x, "secret"),
                id: s(x, "webhook_id"),
                ts: s(x, "webhook_timestamp"),
                body: s(x, "body"),
                sig: s(x, "webhook_signature"),
                legacy_ts: s(x, "legacy_x_webhook_timestamp"),
                legacy_hex: s(x, "legacy_x_webhook_signature_hex"),
            })
            .collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn standard_vectors_verify() {
        let vs = vectors();
        assert_eq!(vs.len(), 3);
        for v in &vs {
            let got = v
                .verifier()
                .verify(&v.standard_headers(), v.body.as_bytes(), v.now())
                .expect("vector verifies");
            assert_eq!(
                got,
                Verified {
                    event_id: Some(v.id.clone()),
                    timestamp: v.now(),
                    scheme: Scheme::StandardWebhooks
                }
            );
        }
    }

    #[test]
    fn legacy_vectors_verify_with_and_without_prefix() {
        for v in &vectors() {
            for sig in [
                v.legacy_hex.clone(),
                format!("sha256={}", v.legacy_hex),
                v.legacy_hex.to_uppercase(),
            ] {
                let got = v
                    .verifier()
                    .verify(&v.legacy_headers(&sig), v.body.as_bytes(), v.now())
                    .expect("legacy vector verifies");
                assert_eq!(got.scheme, Scheme::Legacy);
                assert_eq!(got.event_id, None);
                assert_eq!(got.timestamp, v.now());
            }
        }
    }

    #[test]
    fn any_matching_v1_entry_is_accepted() {
        let v = &vectors()[0];
        let list = format!(
            "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= v2,whatever v1a,{} v1,!!notbase64 {}",
            &v.sig[3..],
            v.sig
        );
        let mut h = v.standard_headers();
        h.insert(
            "webhook-signature",
            HeaderValue::from_str(&list).expect("value"),
        );
        assert!(v.verifier().verify(&h, v.body.as_bytes(), v.now()).is_ok());

        // Only the foreign-version entry carries the right bytes: must not be accepted.
        let only_other = format!("v2,{}", &v.sig[3..]);
        h.insert(
            "webhook-signature",
            HeaderValue::from_str(&only_other).expect("value"),
        );
        assert_eq!(
            v.verifier().verify(&h, v.body.as_bytes(), v.now()),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn tampered_body_is_rejected() {
        for v in &vectors() {
            let mut body = v.body.clone().into_bytes();
            body.push(b' ');
            let err = v.verifier().verify(&v.standard_headers(), &body, v.now());
            assert_eq!(err, Err(VerifyError::BadSignature));
            let err = v
                .verifier()
                .verify(&v.legacy_headers(&v.legacy_hex), &body, v.now());
            assert_eq!(err, Err(VerifyError::BadSignature));
        }
    }

    #[test]
    fn tampered_id_or_timestamp_is_rejected() {
        let v = &vectors()[0];
        let mut h = v.standard_headers();
        h.insert("webhook-id", HeaderValue::from_static("another-id"));
        assert_eq!(
            v.verifier().verify(&h, v.body.as_bytes(), v.now()),
            Err(VerifyError::BadSignature)
        );
        let mut h = v.standard_headers();
        h.insert("webhook-timestamp", HeaderValue::from_static("1770319874"));
        assert_eq!(
            v.verifier().verify(&h, v.body.as_bytes(), v.now()),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn wrong_secret_is_rejected() {
        let vs = vectors();
        // Vector 1 uses a different secret from vector 0.
        let wrong = vs[1].verifier();
        let v = &vs[0];
        assert_eq!(
            wrong.verify(&v.standard_headers(), v.body.as_bytes(), v.now()),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            wrong.verify(&v.legacy_headers(&v.legacy_hex), v.body.as_bytes(), v.now()),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_rejected() {
        let v = &vectors()[0];
        let verifier = v.verifier();
        let body = v.body.as_bytes();
        let h = v.standard_headers();
        // Exactly at the tolerance edge is still fine.
        assert!(verifier.verify(&h, body, v.now() + 300).is_ok());
        assert!(verifier.verify(&h, body, v.now() - 300).is_ok());
        let late = verifier.verify(&h, body, v.now() + 301);
        assert_eq!(
            late,
            Err(VerifyError::Stale {
                skew_secs: 301,
                tolerance_secs: 300
            })
        );
        let early = verifier.verify(&h, body, v.now() - 3600);
        assert!(matches!(
            early,
            Err(VerifyError::Stale {
                skew_secs: 3600,
                ..
            })
        ));
        let legacy = verifier.verify(&v.legacy_headers(&v.legacy_hex), body, v.now() + 301);
        assert!(matches!(legacy, Err(VerifyError::Stale { .. })));
        assert_eq!(late.map_err(|e| e.status()), Err(401));

        let strict = v.verifier().with_tolerance(Duration::from_secs(10));
        assert!(strict.verify(&h, body, v.now() + 11).is_err());
        assert!(strict.verify(&h, body, i64::MIN).is_err());
    }

    #[test]
    fn missing_and_malformed_headers() {
        let v = &vectors()[0];
        let verifier = v.verifier();
        let body = v.body.as_bytes();
        let now = v.now();

        // Nothing at all: legacy path, no signature.
        let e = verifier.verify(&HeaderMap::new(), body, now).unwrap_err();
        assert_eq!(e, VerifyError::MissingSignature);
        assert_eq!(e.status(), 401);

        // webhook-* present but no signature: no fallback to legacy, even when legacy is valid.
        let mut h = v.legacy_headers(&v.legacy_hex);
        h.insert("webhook-id", HeaderValue::from_str(&v.id).expect("value"));
        assert_eq!(
            verifier.verify(&h, body, now),
            Err(VerifyError::MissingSignature)
        );

        let mut h = v.standard_headers();
        h.remove("webhook-id");
        let e = verifier.verify(&h, body, now).unwrap_err();
        assert!(matches!(e, VerifyError::Malformed(_)));
        assert_eq!(e.status(), 400);

        let mut h = v.standard_headers();
        h.remove("webhook-timestamp");
        assert!(matches!(
            verifier.verify(&h, body, now),
            Err(VerifyError::Malformed(_))
        ));

        for bad in ["17703198.73", "-1770319873", "abc", ""] {
            let mut h = v.standard_headers();
            h.insert(
                "webhook-timestamp",
                HeaderValue::from_str(bad).expect("value"),
            );
            assert!(
                matches!(
                    verifier.verify(&h, body, now),
                    Err(VerifyError::Malformed(_))
                ),
                "{bad:?}"
            );
        }

        let mut h = v.standard_headers();
        h.insert("webhook-signature", HeaderValue::from_static("garbage"));
        assert_eq!(
            verifier.verify(&h, body, now),
            Err(VerifyError::BadSignature)
        );

        let mut h = v.standard_headers();
        h.insert(
            "webhook-signature",
            HeaderValue::from_bytes(b"v1,\xff").expect("opaque value"),
        );
        assert!(matches!(
            verifier.verify(&h, body, now),
            Err(VerifyError::Malformed(_))
        ));

        // Legacy: timestamp missing, signature not hex.
        let mut h = v.legacy_headers(&v.legacy_hex);
        h.remove("x-webhook-timestamp");
        assert!(matches!(
            verifier.verify(&h, body, now),
            Err(VerifyError::Malformed(_))
        ));
        let h = v.legacy_headers("sha256=zz");
        assert!(matches!(
            verifier.verify(&h, body, now),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn secret_parsing() {
        assert_eq!(Verifier::new("").unwrap_err(), SecretError::Empty);
        assert_eq!(Verifier::new("whsec_").unwrap_err(), SecretError::Empty);
        assert_eq!(
            Verifier::new("whsec_%%%").unwrap_err(),
            SecretError::NotBase64
        );
        // Trailing newline from a credentials file is tolerated, for both schemes.
        let v = &vectors()[0];
        let verifier = Verifier::new(&format!("{}\n", v.secret)).expect("secret");
        assert!(verifier
            .verify(&v.standard_headers(), v.body.as_bytes(), v.now())
            .is_ok());
        assert!(verifier
            .verify(&v.legacy_headers(&v.legacy_hex), v.body.as_bytes(), v.now())
            .is_ok());
        assert!(!format!("{verifier:?}").contains("AAECAw"));
    }
}
