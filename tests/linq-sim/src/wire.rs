//! The JSON shapes Linq puts on the wire, rendered from the state: `Chat`, `ChatHandle`,
//! `SentMessage`, `Message` (partner API) and the `2026-02-03` message-event `data` (webhooks).
//! Field names follow the official `linq-python` 0.65.0 models.

use serde_json::{json, Value};

use crate::state::{fmt_ts, Chat, Direction, Handle, Message, State};

pub fn handle_json(h: &Handle) -> Value {
    json!({
        "id": h.id,
        "handle": h.handle,
        "joined_at": fmt_ts(h.joined_at),
        "service": h.service,
        "is_me": h.is_me,
        "left_at": null,
        "status": "active",
    })
}

fn opt_ts(t: Option<time::OffsetDateTime>) -> Value {
    t.map_or(Value::Null, |t| json!(fmt_ts(t)))
}

impl State {
    pub fn health_json(&self, chat: &Chat) -> Value {
        let status = if self.chat_opted_out(chat) {
            "OPTED_OUT"
        } else {
            "HEALTHY"
        };
        json!({"status": status, "doc_url": "https://docs.linqapp.com/", "updated_at": fmt_ts(chat.updated_at)})
    }

    /// `GET /v3/chats/{id}`.
    pub fn chat_json(&self, chat: &Chat) -> Value {
        json!({
            "id": chat.id,
            "created_at": fmt_ts(chat.created_at),
            "updated_at": fmt_ts(chat.updated_at),
            "display_name": chat.display_name,
            "handles": chat.handles.iter().map(handle_json).collect::<Vec<_>>(),
            "is_archived": false,
            "is_group": chat.is_group,
            "service": chat.service,
            "group_chat_icon": chat.group_chat_icon,
            "health_status": self.health_json(chat),
        })
    }

    fn sender_json(&self, m: &Message) -> Value {
        self.chat(&m.chat_id)
            .and_then(|c| c.handle(&m.from))
            .map_or(Value::Null, handle_json)
    }

    /// `SentMessage`, as in send and create-chat responses.
    pub fn sent_message_json(&self, m: &Message) -> Value {
        json!({
            "id": m.id,
            "created_at": fmt_ts(m.created_at),
            "sent_at": opt_ts(m.sent_at),
            "delivered_at": opt_ts(m.delivered_at),
            "delivery_status": m.delivery_status,
            "is_read": m.read_at.is_some(),
            "parts": m.parts,
            "reply_to": m.reply_to.as_ref().map(|r| r.to_json()),
            "service": m.service,
            "preferred_service": m.preferred_service,
            "effect": m.effect,
            "from_handle": self.sender_json(m),
        })
    }

    /// `Message`, as in `GET /v3/messages/{id}` and message lists.
    pub fn message_json(&self, m: &Message) -> Value {
        let mut v = json!({
            "id": m.id,
            "chat_id": m.chat_id,
            "created_at": fmt_ts(m.created_at),
            "updated_at": fmt_ts(m.updated_at),
            "delivery_status": m.delivery_status,
            "is_delivered": matches!(m.delivery_status.as_str(), "delivered" | "read"),
            "is_from_me": m.direction == Direction::Outbound,
            "is_read": m.read_at.is_some(),
            "from": m.from,
            "from_handle": self.sender_json(m),
            "parts": m.parts,
            "reply_to": m.reply_to.as_ref().map(|r| r.to_json()),
            "sent_at": opt_ts(m.sent_at),
            "delivered_at": opt_ts(m.delivered_at),
            "read_at": opt_ts(m.read_at),
            "service": m.service,
            "preferred_service": m.preferred_service,
            "effect": m.effect,
        });
        if let Some(r) = m.reconciled_at {
            v["reconciled_at"] = json!(fmt_ts(r));
        }
        v
    }

    /// `data` of message.received / sent / delivered / read (`MessageEventV2`).
    pub fn message_event_data(&self, m: &Message) -> Value {
        let Some(chat) = self.chat(&m.chat_id) else {
            return Value::Null;
        };
        let parts: Vec<Value> = m.parts.iter().map(event_part).collect();
        let mut v = json!({
            "id": m.id,
            "chat": {
                "id": chat.id,
                "is_group": chat.is_group,
                "owner_handle": handle_json(chat.me()),
                "health_status": self.health_json(chat),
            },
            "direction": m.direction,
            "sender_handle": self.sender_json(m),
            "parts": parts,
            "service": m.service,
            "effect": m.effect,
            "reply_to": m.reply_to.as_ref().map(|r| r.to_json()),
            "sent_at": opt_ts(m.sent_at),
            "delivered_at": opt_ts(m.delivered_at),
            "read_at": opt_ts(m.read_at),
        });
        if let Some(k) = &m.idempotency_key {
            v["idempotency_key"] = json!(k);
        }
        if let Some(p) = &m.preferred_service {
            v["preferred_service"] = json!(p);
        }
        if let Some(r) = m.reconciled_at {
            v["reconciled_at"] = json!(fmt_ts(r));
        }
        v
    }
}

/// Webhook parts carry no `reactions`; text parts always carry `mentions` (null when none).
fn event_part(p: &Value) -> Value {
    match p["type"].as_str() {
        Some("text") => {
            let mut v = json!({"type": "text", "value": p["value"], "mentions": p.get("mentions").cloned().unwrap_or(Value::Null)});
            if let Some(d) = p.get("text_decorations") {
                v["text_decorations"] = d.clone();
            }
            v
        }
        Some("media") => json!({
            "type": "media", "id": p["id"], "url": p["url"], "filename": p["filename"],
            "mime_type": p["mime_type"], "size_bytes": p["size_bytes"],
        }),
        _ => json!({"type": p["type"], "value": p["value"]}),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::state::{Now, RuntimeConfig};
    use crate::validate::parse_content;

    const BOT: &str = "+15550001000";
    const ALICE: &str = "+15550002000";

    /// Same keys at every object level (values may differ, null may stand for anything).
    fn assert_same_shape(ours: &Value, theirs: &Value, path: &str) {
        match (ours, theirs) {
            (Value::Object(a), Value::Object(b)) => {
                let ka: Vec<_> = a.keys().collect();
                let kb: Vec<_> = b.keys().collect();
                assert_eq!(ka, kb, "keys differ at {path}");
                for (k, v) in a {
                    assert_same_shape(v, &b[k], &format!("{path}.{k}"));
                }
            }
            (Value::Array(a), Value::Array(b)) if !a.is_empty() && !b.is_empty() => {
                assert_same_shape(&a[0], &b[0], &format!("{path}[0]"))
            }
            (Value::Null, _) | (_, Value::Null) => {}
            (a, b) => assert_eq!(
                std::mem::discriminant(a),
                std::mem::discriminant(b),
                "type differs at {path}: {a} vs {b}"
            ),
        }
    }

    fn example(name: &str) -> Value {
        let p = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    fn event(event_type: &str, data: &Value) -> Value {
        let body =
            crate::webhooks::envelope(event_type, "e", "p", time::OffsetDateTime::now_utc(), data);
        serde_json::from_str(&body).unwrap()
    }

    fn state() -> State {
        State::new(RuntimeConfig {
            webhook_url: None,
            echo_outbound: true,
            retry_base_ms: 200,
        })
    }

    #[test]
    fn message_events_match_the_examples() {
        let mut st = state();
        let now = Now::get();
        let dm = st.create_chat(BOT, &[ALICE.into()], "iMessage", None, None, now);
        let parts = vec![
            json!({"type": "text", "value": "is the deploy done?", "reactions": null, "mentions": null}),
        ];
        let m = st
            .record_inbound(&dm, ALICE, parts, None, "iMessage", false, now)
            .unwrap();
        let ours = event(
            "message.received",
            &st.message_event_data(st.message(&m).unwrap()),
        );
        assert_same_shape(&ours, &example("message.received-1to1.json"), "$");
        assert_eq!(ours["data"]["chat"]["owner_handle"]["is_me"], true);
        assert_eq!(ours["data"]["sender_handle"]["handle"], ALICE);

        let g = st.create_chat(
            BOT,
            &[ALICE.into(), "+15550003000".into()],
            "iMessage",
            None,
            None,
            now,
        );
        let mention = json!([{"handle": BOT, "is_me": true, "range": [0, 7]}]);
        let parts = vec![
            json!({"type": "text", "value": "@Cortex hi", "reactions": null, "mentions": mention}),
        ];
        let m = st
            .record_inbound(&g, ALICE, parts, None, "iMessage", false, now)
            .unwrap();
        let ours = event(
            "message.received",
            &st.message_event_data(st.message(&m).unwrap()),
        );
        assert_same_shape(&ours, &example("message.received-group-mention.json"), "$");

        let content =
            parse_content(&json!({"parts": [{"type": "text", "value": "done"}]})).unwrap();
        let sent = st.send_outbound(&dm, content, false, now).unwrap();
        let msg = st.message_mut(&sent.message_id).unwrap();
        msg.sent_at = Some(now.wall);
        let ours = event(
            "message.sent",
            &st.message_event_data(st.message(&sent.message_id).unwrap()),
        );
        assert_same_shape(&ours, &example("message.sent.json"), "$");
        assert_eq!(ours["data"]["direction"], "outbound");
        assert_eq!(ours["data"]["sender_handle"]["is_me"], true);
        let ours = event(
            "message.delivered",
            &st.message_event_data(st.message(&sent.message_id).unwrap()),
        );
        assert_same_shape(&ours, &example("message.delivered.json"), "$");
    }

    #[test]
    fn chat_json_has_the_bot_and_linq_fields() {
        let mut st = state();
        let dm = st.create_chat(BOT, &[ALICE.into()], "iMessage", None, None, Now::get());
        let v = st.chat_json(st.chat(&dm).unwrap());
        for k in [
            "id",
            "created_at",
            "updated_at",
            "display_name",
            "handles",
            "is_archived",
            "is_group",
            "service",
            "health_status",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["handles"][0]["is_me"], true);
        assert_eq!(v["handles"][0]["handle"], BOT);
        assert_eq!(v["display_name"], ALICE);
        assert_eq!(v["health_status"]["status"], "HEALTHY");
    }
}
