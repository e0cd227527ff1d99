//! Groups have no typing indicator: a group turn still running after `[turns]
//! group_ack_after_s` puts one tapback on the message it answers; a quick turn puts none.

use std::time::Duration;

use picortex_integration::{json, Machine};

const OWNER: &str = "+15550002000";
const NEIGHBOUR: &str = "+15550002001";
const T: Duration = Duration::from_secs(40);

#[test]
fn a_long_group_turn_is_acknowledged_with_one_tapback() {
    let m = Machine::boot();
    m.set_config("turns", "group_ack_after_s", "1");
    m.start_picortex();
    let sim = m.sim();
    let slow = sim.post(
        "/control/inbound",
        json!({"from": OWNER, "group": true, "participants": [NEIGHBOUR], "display_name": "Team",
               "text": "@bot #sleep=4 think hard", "mentions_me": true}),
    );
    let group = slow["chat_id"].as_str().unwrap().to_owned();
    let slow_id = slow["message_id"].as_str().unwrap().to_owned();
    m.wait_reply_containing(&group, "think hard", T);
    let quick = sim.post(
        "/control/inbound",
        json!({"from": OWNER, "chat_id": group, "group": true, "participants": [NEIGHBOUR],
               "text": "@bot quick one", "mentions_me": true}),
    );
    let quick_id = quick["message_id"].as_str().unwrap().to_owned();
    m.wait_reply_containing(&group, "quick one", T);
    m.wait_settled(T);
    // Longer than group_ack_after_s, so a late tapback on the quick turn would have come by now.
    std::thread::sleep(Duration::from_millis(1500));
    let reactions = |id: &str| -> Vec<serde_json::Value> {
        sim.calls("/api/partner/v3/messages/", "POST")
            .into_iter()
            .filter(|c| {
                c["path"]
                    .as_str()
                    .is_some_and(|p| p.contains(id) && p.ends_with("/reactions"))
            })
            .collect()
    };
    let on_slow = reactions(&slow_id);
    assert_eq!(on_slow.len(), 1, "{on_slow:?}");
    assert_eq!(
        reactions(&quick_id).len(),
        0,
        "a quick turn was acknowledged"
    );
    let msg = sim.get(&format!("/control/messages?chat_id={group}"));
    let text = msg.to_string();
    assert!(
        text.contains("\"like\""),
        "no like tapback on the message: {text}"
    );
}
