//! `/etc/picortex/picortexd.toml`, as each of the three programs reads it: the gateway
//! (`Config::parse`), picortex-run (`[agent]`) and the helper (`[sandbox]`, its egress fence).
//! None may panic on any text. What the gateway accepts must be within the bounds it documents,
//! and what it would put into a turn request must pass picortex-run's check of that request.
//! What the helper accepts as an allowlist must never open the host or link-local.

#![no_main]

use libfuzzer_sys::fuzz_target;
use picortexd::config::Config;

#[allow(dead_code)]
#[path = "../../picortex-provision/src/egress.rs"]
mod egress;

#[path = "common/fence.rs"]
mod fence;

fn gateway(text: &str) {
    let Ok(c) = Config::parse(text, "fuzz") else {
        return;
    };
    assert!((32 << 20..=64 << 30).contains(&c.memory_max_bytes()));
    assert!((1..=86400).contains(&c.runtime_max().as_secs()));
    assert!((1..=3600).contains(&c.linq.timestamp_tolerance_s));
    assert!((100..=10_000).contains(&c.linq.max_part_chars));
    assert!((c.linq.max_part_chars..=100_000).contains(&c.linq.max_reply_chars));
    assert!((1024..=64 << 20).contains(&c.http.max_body_bytes));
    assert!((1..=256).contains(&c.turns.max_concurrent));
    assert!((0.0..=1.0).contains(&c.attention.threshold));
    // 0 is a budget too (nothing runs until the next UTC day), as `limits::budget_usd` says.
    let budget = |b: Option<f64>| {
        b.is_none_or(|b| (0.0..=picortexd::limits::MAX_BUDGET_USD).contains(&b))
    };
    assert!(budget(c.turns.daily_budget_usd));
    assert!(budget(c.turns.daily_budget_total_usd));
    let _ = (c.attention.policy(), c.attention.context_bounds());

    // The gateway pins these into every turn request; picortex-run refuses a request whose
    // permission mode or model it does not take, so every turn would fail.
    assert!(
        picortex_run::request::PERMISSION_MODES.contains(&c.turns.permission_mode.as_str()),
        "gateway accepts permission_mode {:?} that picortex-run refuses",
        c.turns.permission_mode
    );
    let req = picortex_proto::turn::TurnRequest {
        turn_id: "0123456789abcdef0123456789abcdef".into(),
        chat_id: "4c6113a3-cb58-46e5-a29c-326444779872".into(),
        session_id: "2915e81c-5068-4796-ace2-21d2c94ad298".into(),
        resume: false,
        prompt: "hello".into(),
        permission_mode: c.turns.permission_mode.clone(),
        append_system_prompt: None,
        kind: picortex_proto::turn::TurnKind::Discriminate,
        model: Some(c.attention.discriminator_model.clone()),
    };
    let turn = picortex_proto::ids::TurnId::parse(&req.turn_id).unwrap();
    if let Err(e) = picortex_run::request::validate_request(&req, &turn) {
        panic!("a request the gateway would build from this configuration is refused: {e:?}");
    }
}

fn agent(text: &str) {
    let _ = picortex_run::config::parse_config(text);
}

fn sandbox(text: &str) {
    if let Ok(egress::Egress::Allowlist { ranges, names }) = egress::parse(text) {
        for r in &ranges {
            fence::assert_not_host(r);
        }
        // A name in the list never lets a turn reach the host, whatever it resolves to.
        for n in &names {
            let probe = n.strip_prefix('*').map_or_else(|| n.clone(), |rest| format!("a{rest}"));
            assert!(egress::name_allowed(&names, &probe), "{n} does not allow {probe}");
            for ip in ["127.0.0.1", "::1", "169.254.169.254", "10.0.0.1"] {
                assert!(egress::refusal(&egress::Egress::Allowlist { ranges: vec![], names: names.clone() }, ip.parse().unwrap(), true, &[]).is_some());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    gateway(text);
    agent(text);
    sandbox(text);
});
