//! The discriminator's verdict (SPEC A3): a small model, run as its own short turn in the chat's
//! sandbox (picortex-run reads the chat's `~/.picortex/prompts/discriminator.md`), answers with a
//! score between 0 and 1; here that answer becomes "answer" or "stay quiet". It fails closed by
//! default (no usable score → quiet), and a group gets at most `max_unsolicited_per_hour`
//! answers that nobody asked for.

/// The discriminator's settings, from `[attention]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub threshold: f64,
    pub fail_open: bool,
    pub max_unsolicited_per_hour: u32,
}

/// What the discriminator turn produced, as the gateway saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<'a> {
    /// The turn ended `ok` with this text.
    Answered(&'a str),
    /// The turn failed (timeout, agent error, …), with its outcome name.
    Failed(&'a str),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub answer: bool,
    pub rule: &'static str,
    pub score: Option<f64>,
    pub reason: String,
}

/// The score in the model's answer: a JSON object with a numeric `score`, or a bare number, in
/// [0, 1]. Anything else is no score.
pub fn parse_score(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let from_json = || -> Option<f64> {
        let start = t.find('{')?;
        let end = t.rfind('}')?;
        let v: serde_json::Value = serde_json::from_str(t.get(start..=end)?).ok()?;
        v.get("score")?.as_f64()
    };
    let s = from_json()
        .or_else(|| t.trim_end_matches('.').parse::<f64>().ok())
        .ok_or_else(|| format!("no score in the discriminator's answer {:?}", clip(t)))?;
    if !(0.0..=1.0).contains(&s) || !s.is_finite() {
        return Err(format!("score {s} is outside 0..1"));
    }
    Ok(s)
}

fn clip(s: &str) -> String {
    let mut c: String = s.chars().take(80).collect();
    if c.len() < s.len() {
        c.push('…');
    }
    c
}

/// Decide from the discriminator's outcome; `unsolicited_last_hour` counts the chat's answers
/// the discriminator allowed in the past hour.
pub fn decide(p: &Policy, out: &Outcome<'_>, unsolicited_last_hour: u32) -> Verdict {
    let score = match out {
        Outcome::Answered(text) => parse_score(text),
        Outcome::Failed(outcome) => Err(format!("the discriminator turn failed ({outcome})")),
    };
    let score = match score {
        Ok(s) => s,
        Err(why) => {
            return Verdict {
                answer: p.fail_open,
                rule: if p.fail_open {
                    "discriminator_failed_open"
                } else {
                    "discriminator_failed_closed"
                },
                score: None,
                reason: format!(
                    "{why}; {}",
                    if p.fail_open {
                        "answering (fail_open = true)"
                    } else {
                        "staying quiet (fail-closed)"
                    }
                ),
            }
        }
    };
    if score < p.threshold {
        return Verdict {
            answer: false,
            rule: "score",
            score: Some(score),
            reason: format!(
                "discriminator score {score:.2} below threshold {:.2}",
                p.threshold
            ),
        };
    }
    if unsolicited_last_hour >= p.max_unsolicited_per_hour {
        return Verdict {
            answer: false,
            rule: "hourly_cap",
            score: Some(score),
            reason: format!(
                "discriminator score {score:.2} would answer, but this chat already had {unsolicited_last_hour} unsolicited answers this hour (cap {})",
                p.max_unsolicited_per_hour
            ),
        };
    }
    Verdict {
        answer: true,
        rule: "score",
        score: Some(score),
        reason: format!(
            "discriminator score {score:.2} at or above threshold {:.2}",
            p.threshold
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Policy {
        Policy {
            threshold: 0.6,
            fail_open: false,
            max_unsolicited_per_hour: 2,
        }
    }

    #[test]
    fn scores_are_read_from_json_or_a_bare_number() {
        assert_eq!(
            parse_score(r#"{"score": 0.8, "reason": "asks for help"}"#),
            Ok(0.8)
        );
        assert_eq!(parse_score("Sure. {\"score\":1}"), Ok(1.0));
        assert_eq!(parse_score(" 0.25\n"), Ok(0.25));
        for bad in [
            "",
            "yes",
            "{\"score\": \"high\"}",
            "1.5",
            "-0.1",
            "NaN",
            "{\"score\": 2}",
        ] {
            assert!(parse_score(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn threshold_decides() {
        let v = decide(&p(), &Outcome::Answered(r#"{"score":0.9}"#), 0);
        assert!(v.answer, "{v:?}");
        assert_eq!(v.score, Some(0.9));
        let v = decide(&p(), &Outcome::Answered(r#"{"score":0.59}"#), 0);
        assert!(!v.answer);
        assert!(v.reason.contains("below threshold"), "{}", v.reason);
        assert!(
            decide(&p(), &Outcome::Answered("0.6"), 0).answer,
            "the threshold itself answers"
        );
    }

    #[test]
    fn failures_are_closed_unless_configured_open() {
        for out in [Outcome::Answered("I think so"), Outcome::Failed("timeout")] {
            let v = decide(&p(), &out, 0);
            assert!(!v.answer);
            assert_eq!(v.rule, "discriminator_failed_closed");
            let open = Policy {
                fail_open: true,
                ..p()
            };
            assert!(decide(&open, &out, 0).answer);
        }
    }

    #[test]
    fn the_hourly_cap_stops_unsolicited_answers() {
        let out = Outcome::Answered("0.95");
        assert!(decide(&p(), &out, 1).answer);
        let v = decide(&p(), &out, 2);
        assert!(!v.answer);
        assert_eq!(v.rule, "hourly_cap");
    }
}
