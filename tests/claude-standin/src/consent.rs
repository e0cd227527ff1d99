//! The consent knobs (`#ask=`, `#import=`, `#cat=`): what a real agent does with picortex's MCP
//! tools, done for real. `#ask=<path>` reads the file where a `[picortex grant]` line of the
//! prompt says it is; without such a line it starts the MCP server named `picortex` in
//! `--mcp-config`, exactly as the CLI would (its command and args, stdio, newline-delimited
//! JSON-RPC), initializes it, lists its tools and calls `request_access`. `#import=<chat>:<path>`
//! calls `import_file`. `#cat=<absolute path>` reads any file, to prove what a turn can and
//! cannot see.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

const GRANT_PREFIX: &str = "[picortex grant]";
const IMPORT_PREFIX: &str = "[picortex import]";

/// `#cat=`: the file's first 200 characters, or the error.
pub fn cat(path: &str) -> String {
    match std::fs::File::open(path).and_then(|f| {
        let mut s = String::new();
        f.take(4096).read_to_string(&mut s).map(|_| s)
    }) {
        Ok(s) => format!(
            "cat {path}: \"{}\"",
            s.trim().chars().take(200).collect::<String>()
        ),
        Err(e) => format!("cat {path}: error {e}"),
    }
}

/// Where the prompt's grant lines say `what` is readable.
fn granted_mount<'a>(prompt: &'a str, what: &str) -> Option<&'a str> {
    prompt.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(GRANT_PREFIX)?.trim();
        let (w, mount) = rest.split_once(" is readable at ")?;
        (w == what).then_some(mount.trim())
    })
}

/// `#ask=<path>`.
pub fn ask(prompt: &str, what: &str, mcp_config: Option<&str>) -> String {
    if let Some(mount) = granted_mount(prompt, what) {
        return format!("ask: granted, {}", cat(mount));
    }
    match call_tool(
        mcp_config,
        "request_access",
        json!({"what": what, "why": "the question in this chat needs it"}),
    ) {
        Ok(text) => format!("ask: {text}"),
        Err(e) => format!("ask: error {e}"),
    }
}

/// Where the prompt's import line says the copy of `path` is (`~/…`).
fn imported_copy<'a>(prompt: &'a str, path: &str) -> Option<&'a str> {
    prompt.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(IMPORT_PREFIX)?.trim();
        let (p, dest) = rest.split_once(" was copied into this chat's workspace at ")?;
        (p == path).then_some(dest.trim())
    })
}

/// `#import=<chat>:<path>`: with an import line for it in the prompt, read the copy; else ask.
pub fn import(prompt: &str, spec: &str, mcp_config: Option<&str>) -> String {
    let Some((chat, path)) = spec.split_once(':') else {
        return "import: error: want <chat>:<path>".into();
    };
    if let Some(dest) = imported_copy(prompt, path) {
        let home = std::env::var("HOME").unwrap_or_default();
        let full = dest.replacen('~', &home, 1);
        return format!("import: copied, {}", cat(&full));
    }
    match call_tool(
        mcp_config,
        "import_file",
        json!({"from_chat": chat, "path": path, "why": "asked to bring it over"}),
    ) {
        Ok(text) => format!("import: {text}"),
        Err(e) => format!("import: error {e}"),
    }
}

/// `--mcp-config` is a JSON string or a file holding one.
fn server(mcp_config: Option<&str>) -> Result<(String, Vec<String>), String> {
    let raw = mcp_config.ok_or("no --mcp-config")?;
    let text = if raw.trim_start().starts_with('{') {
        raw.to_owned()
    } else {
        std::fs::read_to_string(raw).map_err(|e| format!("--mcp-config {raw}: {e}"))?
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("--mcp-config: {e}"))?;
    let s = &v["mcpServers"]["picortex"];
    let cmd = s["command"]
        .as_str()
        .ok_or("no picortex server in --mcp-config")?
        .to_owned();
    let args = s["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok((cmd, args))
}

fn call_tool(mcp_config: Option<&str>, tool: &str, args: Value) -> Result<String, String> {
    let (cmd, argv) = server(mcp_config)?;
    let mut child = Command::new(&cmd)
        .args(&argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting MCP server {cmd}: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut rpc = move |msg: Value, expect_reply: bool| -> Result<Value, String> {
        writeln!(stdin, "{msg}").map_err(|e| e.to_string())?;
        stdin.flush().map_err(|e| e.to_string())?;
        if !expect_reply {
            return Ok(Value::Null);
        }
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        serde_json::from_str(&line).map_err(|e| format!("MCP reply {line:?}: {e}"))
    };
    let init = rpc(
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"claude-standin","version":"1"}}}),
        true,
    )?;
    if init.get("result").is_none() {
        return Err(format!("initialize failed: {init}"));
    }
    rpc(
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        false,
    )?;
    let list = rpc(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}), true)?;
    let listed = list["result"]["tools"]
        .as_array()
        .is_some_and(|t| t.iter().any(|x| x["name"] == tool));
    if !listed {
        return Err(format!("the server has no tool {tool}: {list}"));
    }
    let r = rpc(
        json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name": tool, "arguments": args}}),
        true,
    )?;
    drop(rpc); // closes the server's stdin: it exits
    let _ = child.wait();
    let text = r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    if r["result"]["isError"] == true {
        return Err(text);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_lines_are_found_by_path() {
        let p = "[picortex grant] notes/a.txt is readable at /var/lib/picortex/shared/0\nhi #ask=notes/a.txt";
        assert_eq!(
            granted_mount(p, "notes/a.txt"),
            Some("/var/lib/picortex/shared/0")
        );
        assert_eq!(granted_mount(p, "notes/b.txt"), None);
    }
}
