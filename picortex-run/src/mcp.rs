//! The agent's way to ask the owner for something (SPEC C2, C3): a small MCP server over stdio,
//! `picortex-run mcp --requests <file>`, that the agent is given with `--mcp-config` and allowed
//! with `--allowedTools`. Its tools (`request_access`, `import_file`) answer at once — nothing
//! waits inside the unit while the owner thinks — and append the request to a file in the chat's
//! `~/.tmp`, which picortex-run reads back after the agent exits ([`collect`]) and hands to the
//! gateway inside the turn's result document. The file is the agent's own (same user): what it
//! holds is only ever a request, bounded and re-validated by the gateway and the helper.
//!
//! JSON-RPC 2.0, one message per line (MCP's stdio transport): `initialize`,
//! `notifications/initialized`, `ping`, `tools/list`, `tools/call`; anything else with an id is
//! "method not found".

use picortex_proto::consent::{
    AccessRequest, MAX_REQUESTS_PER_TURN, MCP_SERVER, OWNER_WORKSPACE, TOOL_IMPORT_FILE,
    TOOL_REQUEST_ACCESS,
};
use picortex_proto::turn::{TurnKind, TurnRequest};
use serde_json::{json, Value};
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The argument that selects this mode.
pub const MCP_ARG: &str = "mcp";
/// The protocol version answered when the client asks for none we know.
pub const PROTOCOL_VERSION: &str = "2025-06-18";
const KNOWN_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18"];
/// The longest JSON-RPC line read.
const MAX_LINE: u64 = 64 << 10;
/// The largest requests file read back.
const MAX_FILE: u64 = 64 << 10;

/// Where a turn's requests are written: in the home's `~/.tmp`, named after the turn.
pub fn requests_path(home: &Path, turn_id: &str) -> PathBuf {
    home.join(crate::seed::TMP_DIR_NAME)
        .join(format!(".picortex-requests-{turn_id}"))
}

/// Make an empty requests file for this turn (a fresh one: whatever was at that name goes,
/// symlink or not, and the new one is created with O_EXCL).
pub fn prepare(home: &Path, turn_id: &str) -> std::io::Result<PathBuf> {
    let p = requests_path(home, turn_id);
    match std::fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)?;
    Ok(p)
}

/// The agent's arguments for the MCP server: `--mcp-config <json> --strict-mcp-config
/// --allowedTools <the two tools>`. Empty for a discriminator turn, or when this program's own
/// path is unknown (the agent then simply has no way to ask).
pub fn agent_args(req: &TurnRequest, home: &Path) -> Vec<String> {
    if req.kind != TurnKind::Answer {
        return Vec::new();
    }
    let Ok(exe) = std::env::current_exe() else {
        return Vec::new();
    };
    let file = requests_path(home, &req.turn_id);
    let config = json!({
        "mcpServers": {
            MCP_SERVER: {
                "type": "stdio",
                "command": exe.to_string_lossy(),
                "args": [MCP_ARG, "--requests", file.to_string_lossy()],
            }
        }
    });
    vec![
        "--mcp-config".into(),
        config.to_string(),
        "--strict-mcp-config".into(),
        "--allowedTools".into(),
        format!("mcp__{MCP_SERVER}__{TOOL_REQUEST_ACCESS},mcp__{MCP_SERVER}__{TOOL_IMPORT_FILE}"),
    ]
}

/// Read back what the agent asked for, and remove the file. Malformed lines, invalid requests
/// and those beyond [`MAX_REQUESTS_PER_TURN`] are dropped (and logged): the result document
/// must stay valid whatever the agent wrote.
pub fn collect(home: &Path, turn_id: &str) -> Vec<AccessRequest> {
    let p = requests_path(home, turn_id);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&p);
    let _ = std::fs::remove_file(&p);
    let Ok(f) = f else {
        return Vec::new();
    };
    if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return Vec::new();
    }
    let mut text = String::new();
    if f.take(MAX_FILE).read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<AccessRequest>(line) {
            Ok(r) if r.validate().is_ok() && !out.contains(&r) => {
                if out.len() < MAX_REQUESTS_PER_TURN {
                    out.push(r);
                } else {
                    tracing::warn!(turn = %turn_id, "more than {MAX_REQUESTS_PER_TURN} access requests; the rest are dropped");
                    break;
                }
            }
            Ok(_) => {
                tracing::warn!(turn = %turn_id, "dropped an invalid or repeated access request")
            }
            Err(e) => tracing::warn!(turn = %turn_id, "dropped a malformed access request: {e}"),
        }
    }
    out
}

/// `picortex-run mcp --requests <file>`: serve until stdin closes.
pub fn serve_main(args: &[String]) -> Result<(), String> {
    let file = match args {
        [flag, path] if flag == "--requests" && path.starts_with('/') => PathBuf::from(path),
        _ => return Err("usage: picortex-run mcp --requests <absolute path>".into()),
    };
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    serve(stdin.lock(), &mut stdout, &file).map_err(|e| e.to_string())
}

/// The server loop over any line reader and writer (tests drive it in memory).
pub fn serve(input: impl BufRead, out: &mut impl Write, file: &Path) -> std::io::Result<()> {
    let mut input = input.take(u64::MAX);
    let mut asked = 0usize;
    loop {
        let mut line = Vec::new();
        let n = (&mut input).take(MAX_LINE).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with(b"\n") && n as u64 == MAX_LINE {
            // An overlong line: skip to its end and answer nothing (its id is unknown).
            let mut rest = Vec::new();
            input.read_until(b'\n', &mut rest)?;
            continue;
        }
        let Ok(msg) = serde_json::from_slice::<Value>(&line) else {
            write_msg(out, &error(Value::Null, -32700, "parse error"))?;
            continue;
        };
        if let Some(reply) = handle(&msg, file, &mut asked) {
            write_msg(out, &reply)?;
        }
    }
}

fn write_msg(out: &mut impl Write, v: &Value) -> std::io::Result<()> {
    let mut s = v.to_string();
    s.push('\n');
    out.write_all(s.as_bytes())?;
    out.flush()
}

fn error(id: Value, code: i64, msg: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": msg}})
}

fn ok(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn tool_text(text: &str, is_error: bool) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": is_error})
}

/// The tools as `tools/list` describes them.
pub fn tools() -> Value {
    json!([
        {
            "name": TOOL_REQUEST_ACCESS,
            "description": "Ask the owner for read access to a file of their private workspace (their 1:1 chat's home), for one answer. Returns at once; the owner is asked in their DM, and if they agree this question is answered again with the file readable at a path given in the prompt. Tell the people here you are checking with the owner.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "what": {"type": "string", "description": "the file's path, relative to the owner's workspace"},
                    "why": {"type": "string", "description": "why you need it, in one sentence the owner will read"}
                },
                "required": ["what", "why"]
            }
        },
        {
            "name": TOOL_IMPORT_FILE,
            "description": "Ask the owner to copy a file from another chat's workspace (\"owner\" for the owner's own) into this chat's inbox/. Returns at once; the copy happens only if the owner agrees in their DM.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "from_chat": {"type": "string", "description": "\"owner\", or the chat id"},
                    "path": {"type": "string", "description": "the file's path, relative to that chat's workspace"},
                    "why": {"type": "string"}
                },
                "required": ["from_chat", "path", "why"]
            }
        }
    ])
}

fn handle(msg: &Value, file: &Path, asked: &mut usize) -> Option<Value> {
    let id = msg.get("id").cloned();
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    let Some(id) = id else {
        return None; // a notification (notifications/initialized, cancelled…): no answer
    };
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    Some(match method {
        "initialize" => {
            let asked_for = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(PROTOCOL_VERSION);
            let version = if KNOWN_VERSIONS.contains(&asked_for) {
                asked_for
            } else {
                PROTOCOL_VERSION
            };
            ok(
                id,
                json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": MCP_SERVER, "version": env!("CARGO_PKG_VERSION")},
                }),
            )
        }
        "ping" => ok(id, json!({})),
        "tools/list" => ok(id, json!({"tools": tools()})),
        "tools/call" => ok(id, call(&params, file, asked)),
        _ => error(id, -32601, "method not found"),
    })
}

fn call(params: &Value, file: &Path, asked: &mut usize) -> Value {
    let name = params.get("name").and_then(Value::as_str).unwrap_or("");
    let args = params.get("arguments").cloned().unwrap_or(Value::Null);
    let s = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_owned);
    let req = match name {
        TOOL_REQUEST_ACCESS => match (s("what"), s("why")) {
            (Some(what), why) => AccessRequest::Read {
                what,
                why: why.unwrap_or_default(),
            },
            _ => return tool_text("request_access needs \"what\" (a path) and \"why\".", true),
        },
        TOOL_IMPORT_FILE => match (s("from_chat"), s("path"), s("why")) {
            (Some(from_chat), Some(path), why) => AccessRequest::Import {
                from_chat,
                path,
                why: why.unwrap_or_default(),
            },
            _ => {
                return tool_text(
                    &format!("import_file needs \"from_chat\" (\"{OWNER_WORKSPACE}\" or a chat id), \"path\" and \"why\"."),
                    true,
                )
            }
        },
        other => return tool_text(&format!("no tool named {other:?}"), true),
    };
    if let Err(e) = req.validate() {
        return tool_text(&format!("not asked: {e}"), true);
    }
    if *asked >= MAX_REQUESTS_PER_TURN {
        return tool_text(
            &format!("not asked: at most {MAX_REQUESTS_PER_TURN} requests per answer"),
            true,
        );
    }
    let line = match serde_json::to_string(&req) {
        Ok(l) => l + "\n",
        Err(e) => return tool_text(&format!("not asked: {e}"), true),
    };
    let wrote = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = wrote {
        return tool_text(&format!("could not record the request: {e}"), true);
    }
    *asked += 1;
    tool_text(
        "I've asked the owner in their DM. Nothing more to do now: tell the people here you're checking with the owner and will come back to this. If they agree, this question comes back to you with access.",
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[Value], file: &Path) -> Vec<Value> {
        let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut out = Vec::new();
        serve(std::io::Cursor::new(input), &mut out, file).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_client_initializes_lists_and_asks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join(".tmp")).unwrap();
        let f = prepare(d.path(), "t1").unwrap();
        let r = run(
            &[
                json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}),
                json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
                json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
                json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"request_access","arguments":{"what":"notes/plan.md","why":"asked about the plan"}}}),
                json!({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"request_access","arguments":{"what":"../etc/passwd","why":"x"}}}),
                json!({"jsonrpc":"2.0","id":5,"method":"bogus"}),
            ],
            &f,
        );
        assert_eq!(r.len(), 5, "{r:?}");
        assert_eq!(r[0]["result"]["protocolVersion"], "2025-06-18");
        assert_eq!(r[1]["result"]["tools"].as_array().unwrap().len(), 2);
        assert_eq!(r[2]["result"]["isError"], false);
        assert_eq!(r[3]["result"]["isError"], true);
        assert_eq!(r[4]["error"]["code"], -32601);
        let got = collect(d.path(), "t1");
        assert_eq!(
            got,
            vec![AccessRequest::Read {
                what: "notes/plan.md".into(),
                why: "asked about the plan".into()
            }]
        );
        assert!(!f.exists(), "collected once");
        assert!(collect(d.path(), "t1").is_empty());
    }

    #[test]
    fn collect_drops_garbage_and_caps() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join(".tmp")).unwrap();
        let f = prepare(d.path(), "t2").unwrap();
        let mut text =
            String::from("not json\n{\"kind\":\"read\",\"what\":\"/abs\",\"why\":\"\"}\n");
        for i in 0..10 {
            text.push_str(&format!(
                "{{\"kind\":\"read\",\"what\":\"f{i}\",\"why\":\"\"}}\n"
            ));
        }
        std::fs::write(&f, text).unwrap();
        assert_eq!(collect(d.path(), "t2").len(), MAX_REQUESTS_PER_TURN);
    }

    #[test]
    fn discriminator_turns_get_no_tools() {
        let mut req = TurnRequest {
            turn_id: "0123456789abcdef0123456789abcdef".into(),
            chat_id: "c".into(),
            session_id: "s".into(),
            resume: false,
            prompt: "p".into(),
            permission_mode: "dontAsk".into(),
            append_system_prompt: None,
            kind: TurnKind::Discriminate,
            model: None,
        };
        assert!(agent_args(&req, Path::new("/h")).is_empty());
        req.kind = TurnKind::Answer;
        let a = agent_args(&req, Path::new("/h"));
        assert_eq!(a[0], "--mcp-config");
        let cfg: Value = serde_json::from_str(&a[1]).unwrap();
        assert_eq!(
            cfg["mcpServers"]["picortex"]["args"][2],
            "/h/.tmp/.picortex-requests-0123456789abcdef0123456789abcdef"
        );
        assert!(a[4].contains("mcp__picortex__request_access"));
    }
}
