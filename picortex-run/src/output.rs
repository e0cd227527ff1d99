//! Reading what `claude -p --output-format json` printed (research/claude-cli.md §1, §5, §8).
//! The document is one result object, or an array of messages with the result last (verbose
//! mode); NDJSON (stream-json) is accepted too. Everything the agent prints is untrusted: a
//! result must at least say `type: "result"` and carry a boolean `is_error`.

use picortex_proto::turn::Usage;
use serde_json::Value;

/// The fields of a result message picortex cares about.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentResult {
    pub is_error: bool,
    pub subtype: Option<String>,
    /// The reply (success arm) or the error text (`is_error` with `subtype: "success"`).
    pub result: Option<String>,
    /// The error arm's `errors[]`.
    pub errors: Vec<String>,
    pub session_id: Option<String>,
    pub total_cost_usd: Option<f64>,
    pub usage: Option<Usage>,
    pub duration_ms: Option<u64>,
    pub num_turns: Option<u64>,
}

impl AgentResult {
    /// The text that explains an error result: `result`, else `errors` joined, else the subtype.
    pub fn error_text(&self) -> String {
        match &self.result {
            Some(r) if !r.trim().is_empty() => r.clone(),
            _ if !self.errors.is_empty() => self.errors.join("; "),
            _ => self
                .subtype
                .clone()
                .unwrap_or_else(|| "unknown error".to_owned()),
        }
    }

    /// Whether any of the agent's own texts contains `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.result.as_deref().is_some_and(|r| r.contains(needle))
            || self.errors.iter().any(|e| e.contains(needle))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum AgentOutput {
    /// Nothing but whitespace.
    Empty,
    /// Something that is not a result document; the reason, for the operator.
    Bad(String),
    Result(AgentResult),
}

/// Classify the agent's stdout.
pub fn parse_output(stdout: &[u8]) -> AgentOutput {
    let Ok(text) = std::str::from_utf8(stdout) else {
        return AgentOutput::Bad("output is not UTF-8".to_owned());
    };
    let text = text.trim();
    if text.is_empty() {
        return AgentOutput::Empty;
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => match items.iter().rev().find(|m| is_result(m)) {
            Some(r) => from_value(r),
            None => AgentOutput::Bad("JSON array without a result message".to_owned()),
        },
        Ok(v @ Value::Object(_)) if is_result(&v) => from_value(&v),
        Ok(Value::Object(_)) => AgentOutput::Bad("JSON object is not a result message".to_owned()),
        Ok(_) => AgentOutput::Bad("JSON document is neither an object nor an array".to_owned()),
        Err(whole) => {
            // stream-json: one message per line, the result last.
            let lines: Result<Vec<Value>, _> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str::<Value>)
                .collect();
            match lines {
                Ok(msgs) if msgs.len() > 1 => match msgs.iter().rev().find(|m| is_result(m)) {
                    Some(r) => from_value(r),
                    None => AgentOutput::Bad("JSON lines without a result message".to_owned()),
                },
                _ => AgentOutput::Bad(format!("output is not JSON: {whole}")),
            }
        }
    }
}

fn is_result(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("result")
}

fn from_value(v: &Value) -> AgentOutput {
    let Some(is_error) = v.get("is_error").and_then(Value::as_bool) else {
        return AgentOutput::Bad("result message without a boolean is_error".to_owned());
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let errors = match v.get("errors") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
            .collect(),
        Some(Value::String(e)) => vec![e.clone()],
        _ => Vec::new(),
    };
    let usage = v.get("usage").filter(|u| u.is_object()).map(|u| {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        Usage {
            input_tokens: n("input_tokens"),
            output_tokens: n("output_tokens"),
            cache_read_input_tokens: n("cache_read_input_tokens"),
            cache_creation_input_tokens: n("cache_creation_input_tokens"),
        }
    });
    AgentOutput::Result(AgentResult {
        is_error,
        subtype: s("subtype"),
        result: s("result"),
        errors,
        session_id: s("session_id"),
        total_cost_usd: v
            .get("total_cost_usd")
            .and_then(Value::as_f64)
            .filter(|c| c.is_finite() && *c >= 0.0),
        usage,
        duration_ms: v.get("duration_ms").and_then(Value::as_u64),
        num_turns: v.get("num_turns").and_then(Value::as_u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(s: &str) -> AgentResult {
        match parse_output(s.as_bytes()) {
            AgentOutput::Result(r) => r,
            other => panic!("not a result: {other:?}"),
        }
    }

    // research/claude-cli.md §8, verbatim apart from the elided uuids.
    const SUCCESS: &str = r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":1946,"duration_api_ms":1876,
 "num_turns":1,"result":"Paris.","stop_reason":"end_turn","session_id":"c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a10",
 "total_cost_usd":0.0046,"usage":{"input_tokens":3634,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,
 "output_tokens":74,"service_tier":"standard"},"modelUsage":{"claude-haiku-4-5-20251001":{"inputTokens":3634,
 "outputTokens":74,"cacheReadInputTokens":0,"cacheCreationInputTokens":0,"webSearchRequests":0,"costUSD":0.0046,
 "contextWindow":200000,"maxOutputTokens":32000}},"permission_denials":[],"terminal_reason":"completed",
 "api_error_status":null,"uuid":"u"}"#;

    #[test]
    fn success_object() {
        let r = result(SUCCESS);
        assert!(!r.is_error);
        assert_eq!(r.result.as_deref(), Some("Paris."));
        assert_eq!(
            r.session_id.as_deref(),
            Some("c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a10")
        );
        assert_eq!(r.total_cost_usd, Some(0.0046));
        assert_eq!(r.duration_ms, Some(1946));
        assert_eq!(r.num_turns, Some(1));
        let u = r.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (3634, 74));
    }

    #[test]
    fn error_shapes() {
        let r = result(
            r#"{"type":"result","subtype":"error_during_execution","is_error":true,"num_turns":0,"errors":["No conversation found with session ID: 933a66ba-1"],"session_id":"s","total_cost_usd":0,"usage":{},"modelUsage":{},"permission_denials":[]}"#,
        );
        assert!(r.is_error && r.result.is_none());
        assert_eq!(
            r.error_text(),
            "No conversation found with session ID: 933a66ba-1"
        );
        assert!(r.mentions("No conversation found with session ID"));
        assert_eq!(r.usage, Some(Usage::default()));

        let r = result(
            r#"{"type":"result","subtype":"error_max_turns","is_error":true,"num_turns":3,"terminal_reason":"max_turns","errors":["Reached maximum number of turns (2)"],"session_id":"s"}"#,
        );
        assert_eq!(r.error_text(), "Reached maximum number of turns (2)");
        assert_eq!(r.subtype.as_deref(), Some("error_max_turns"));

        let r = result(
            r#"{"type":"result","subtype":"success","is_error":true,"result":"Not logged in · Please run /login","terminal_reason":"api_error","api_error_status":null,"session_id":"s"}"#,
        );
        assert_eq!(r.error_text(), "Not logged in · Please run /login");

        let r = result(r#"{"type":"result","subtype":"error_max_budget_usd","is_error":true}"#);
        assert_eq!(r.error_text(), "error_max_budget_usd");
    }

    #[test]
    fn verbose_array_takes_the_last_result() {
        let doc = format!(
            r#"[{{"type":"system","subtype":"init","session_id":"S"}},
               {{"type":"assistant","message":{{"content":[{{"type":"text","text":"hi"}}]}}}},
               {{"type":"result","subtype":"success","is_error":false,"result":"first"}},
               {{"type":"rate_limit_event"}},
               {}]"#,
            SUCCESS
        );
        assert_eq!(result(&doc).result.as_deref(), Some("Paris."));
        assert_eq!(
            parse_output(br#"[{"type":"system"}]"#),
            AgentOutput::Bad("JSON array without a result message".into())
        );
    }

    #[test]
    fn stream_json_lines_take_the_last_result() {
        let doc = format!(
            "{{\"type\":\"system\",\"subtype\":\"init\"}}\n{{\"type\":\"assistant\"}}\n{}\n",
            SUCCESS.replace('\n', "")
        );
        assert_eq!(result(&doc).result.as_deref(), Some("Paris."));
    }

    #[test]
    fn empty_and_garbage() {
        assert_eq!(parse_output(b""), AgentOutput::Empty);
        assert_eq!(parse_output(b" \n\t"), AgentOutput::Empty);
        for bad in [
            &b"this is not JSON { \"type\": \"result\""[..],
            b"Error: something",
            b"\xff\xfe",
            b"42",
            br#"{"type":"assistant"}"#,
            br#"{"type":"result","result":"no is_error"}"#,
            br#"{"type":"result","is_error":"false"}"#,
            b"{\"type\":\"result\",\"is_error\":false}\ntrailing garbage",
        ] {
            assert!(
                matches!(parse_output(bad), AgentOutput::Bad(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn hostile_numbers_are_dropped() {
        let r = result(
            r#"{"type":"result","is_error":false,"result":"x","total_cost_usd":-1,"duration_ms":-5,"num_turns":"2"}"#,
        );
        assert_eq!(
            (r.total_cost_usd, r.duration_ms, r.num_turns),
            (None, None, None)
        );
    }
}
