//! SPEC C3 (issue #11, done-when 3): the sharing bridge. A group's agent asks for a copy of a
//! file of the owner's workspace (`import_file`, through picortex-run's MCP server); after the
//! owner's `yes` from their DM the helper copies it into the group's `inbox/`, byte for byte,
//! owned by the group's user, 0600, and a `bridge_events` row records it with the same sha256.
//! Called directly over D-Bus as the gateway user, the helper refuses a symlink, a symlinked
//! directory on the way, `..`, an absolute path, a fifo and a file over the cap.

use std::time::Duration;

use picortex_integration::{chat_tag, json, Machine};

const OWNER: &str = "+15550002000";
const FRIEND: &str = "+15557770002";
const T: Duration = Duration::from_secs(60);
const SECRET: &str = "SECRET-itinerary-41b7";
const FILE: &str = "notes/itinerary.txt";

fn import_file(m: &Machine, src: &str, path: &str, dst: &str) -> (i32, String) {
    let o = m.sh(&format!(
        "runuser -u picortex -- busctl call org.picortex.Provision1 /org/picortex/Provision1 org.picortex.Provision1 ImportFile sss {src} '{path}' {dst}"
    ));
    (o.code, format!("{}{}", o.stdout, o.stderr))
}

fn inbox_files(m: &Machine, tag: &str) -> Vec<String> {
    m.ok(&format!(
        "ls -A /var/lib/picortex/chats/{tag}/inbox 2>/dev/null || true"
    ))
    .lines()
    .map(str::to_owned)
    .collect()
}

#[test]
fn an_approved_import_is_copied_byte_for_byte_and_nothing_else_gets_through() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();

    // The owner's workspace, with a file and the things that must never cross.
    let mut dm = None;
    m.exchange(OWNER, &mut dm, "hello");
    let dm = dm.unwrap();
    let otag = chat_tag(&dm);
    let g = sim.post(
        "/control/inbound",
        json!({"from": OWNER, "group": true, "participants": [FRIEND], "display_name": "Trip", "text": "hi all"}),
    );
    let group = g["chat_id"].as_str().unwrap().to_owned();
    m.wait_chat_settled(&group, T);
    let gtag = chat_tag(&group);
    m.ok(&format!(
        "set -e; h=/var/lib/picortex/chats/{otag}; u=chat-{otag}
         install -d -o $u -g $u -m 0700 $h/notes
         printf '{SECRET}\\nday 1: fly\\n' | install -o $u -g $u -m 0600 /dev/stdin $h/{FILE}
         ln -s /etc/shadow $h/leak; ln -s /var/lib/picortex/chats/{gtag} $h/linkdir
         mkfifo -m 0600 $h/pipe; chown -h $u:$u $h/leak $h/linkdir $h/pipe
         truncate -s 17M $h/big.bin; chown $u:$u $h/big.bin"
    ));

    // The friend asks; the agent asks for a copy through the MCP tool.
    let r = sim.post(
        "/control/inbound",
        json!({"from": FRIEND, "chat_id": group, "text": format!("bring the itinerary over #import=owner:{FILE}"), "mentions_me": true}),
    );
    let q = r["message_id"].as_str().unwrap().to_owned();
    let row = m.wait_for("the import's disclosure", T, || {
        let r = m.sql(&format!(
            "SELECT d.id || '|' || d.number FROM disclosures d JOIN messages x ON x.id = d.message_id
             WHERE x.linq_id = '{q}' AND d.kind = 'import' AND d.status = 'pending'"
        ));
        (!r.is_empty()).then_some(r)
    });
    let (id, n) = row.split_once('|').unwrap();
    let challenge = m.wait_reply_containing(&dm, &format!("yes {n}"), T);
    assert!(
        challenge["text"].as_str().unwrap().contains(FILE),
        "{challenge}"
    );
    m.wait_reply_containing(&group, "Let me check with the owner", T);
    assert!(inbox_files(&m, &gtag).is_empty(), "nothing before the yes");

    // The owner's yes: the helper copies it, the bridge records it, the question is answered.
    let yes = sim.text(OWNER, Some(&dm), &format!("yes {n}"));
    let yes_id = yes["message_id"].as_str().unwrap();
    let answer = m.wait_reply_containing(&group, SECRET, T);
    assert!(
        answer["text"]
            .as_str()
            .unwrap()
            .contains("import: copied, cat /var/lib/picortex/chats/"),
        "{answer}"
    );
    m.wait_settled(T);
    let dest = format!("/var/lib/picortex/chats/{gtag}/inbox/itinerary.txt");
    m.ok(&format!("cmp /var/lib/picortex/chats/{otag}/{FILE} {dest}"));
    assert_eq!(
        m.ok(&format!("stat -c '%U %a' {dest}")).trim(),
        format!("chat-{gtag} 600")
    );
    let sha = m.ok(&format!("sha256sum {dest} | cut -d' ' -f1"));
    let ev = m.sql(&format!(
        "SELECT source_chat || '|' || dest_chat || '|' || path || '|' || dest_path || '|' || sha256 || '|' || size || '|' || approver || '|' || approval_message
         FROM bridge_events WHERE disclosure_id = {id}"
    ));
    let size = m.ok(&format!("stat -c %s {dest}"));
    assert_eq!(
        ev,
        format!(
            "{dm}|{group}|{FILE}|inbox/itinerary.txt|{}|{}|{OWNER}|{yes_id}",
            sha.trim(),
            size.trim()
        )
    );
    assert_eq!(
        m.sql(&format!(
            "SELECT b.challenge_message = o.linq_message_id FROM bridge_events b JOIN disclosures d ON d.id = b.disclosure_id
             JOIN outbox o ON o.idempotency_key = d.challenge_key WHERE b.disclosure_id = {id}"
        )),
        "1",
        "the challenge's Linq message is on record"
    );
    assert_eq!(
        m.sql(&format!("SELECT status FROM disclosures WHERE id = {id}")),
        "copied"
    );
    assert_eq!(inbox_files(&m, &gtag), vec!["itinerary.txt".to_owned()]);

    // The helper itself refuses what must not cross, even for the gateway's own user.
    for bad in [
        "leak",
        "linkdir/inbox/itinerary.txt",
        &format!("../{gtag}/inbox/itinerary.txt"),
        "/etc/shadow",
        "pipe",
        "big.bin",
        "notes",
    ] {
        let (code, out) = import_file(&m, &dm, bad, &group);
        assert_ne!(code, 0, "{bad} was copied: {out}");
    }
    // A second import of the good file never overwrites the first.
    let (code, out) = import_file(&m, &dm, FILE, &group);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("inbox/itinerary-1.txt"), "{out}");
    let mut files = inbox_files(&m, &gtag);
    files.sort();
    assert_eq!(files, vec!["itinerary-1.txt", "itinerary.txt"]);
    // Someone else than the gateway is refused by polkit.
    let o = m.sh(&format!(
        "runuser -u nobody -- busctl call org.picortex.Provision1 /org/picortex/Provision1 org.picortex.Provision1 ImportFile sss {dm} {FILE} {group}"
    ));
    assert_ne!(o.code, 0);
    assert!(
        m.journal("-u picortex-provision")
            .contains("ImportFile by uid")
            && m.journal("-u picortex-provision").contains("refused"),
        "each refusal is audited"
    );
}
