//! Authorisation: every method asks polkit about the caller's bus name (the `system-bus-name`
//! subject, which polkitd resolves from credentials the bus recorded at connect time, never a PID
//! that could be recycled). Interactive authentication is allowed only when the caller said it
//! can wait for it (`busctl --allow-interactive-authorization`), as an admin at a terminal can.

use std::collections::HashMap;

use zbus::message::{Flags, Header};
use zbus::names::BusName;
use zbus_polkit::policykit1::{AuthorityProxy, CheckAuthorizationFlags, Subject};

use crate::audit::Caller;

#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("call has no sender")]
    NoSender,
    #[error("not authorised by polkit for {action} (only the picortex gateway user, or an administrator who authenticates, may do this)")]
    Denied { action: String },
    #[error("could not ask polkit: {0}")]
    Polkit(String),
}

/// The caller's identity as the bus recorded it.
pub async fn caller(conn: &zbus::Connection, hdr: &Header<'_>) -> Result<Caller, AuthzError> {
    let sender = hdr.sender().ok_or(AuthzError::NoSender)?;
    let uid = match zbus::fdo::DBusProxy::new(conn).await {
        Ok(dbus) => dbus
            .get_connection_unix_user(BusName::from(sender.to_owned()))
            .await
            .ok(),
        Err(_) => None,
    };
    Ok(Caller {
        bus_name: sender.to_string(),
        uid,
    })
}

pub async fn check(
    conn: &zbus::Connection,
    hdr: &Header<'_>,
    action: &str,
    details: &HashMap<&str, &str>,
) -> Result<(), AuthzError> {
    let subject = Subject::new_for_message_header(hdr).map_err(|_| AuthzError::NoSender)?;
    let authority = AuthorityProxy::new(conn)
        .await
        .map_err(|e| AuthzError::Polkit(e.to_string()))?;
    let flags = if hdr
        .primary()
        .flags()
        .contains(Flags::ALLOW_INTERACTIVE_AUTH)
    {
        CheckAuthorizationFlags::ALLOW_USER_INTERACTION
    } else {
        CheckAuthorizationFlags::empty()
    };
    let r = authority
        .check_authorization(&subject, action, details, flags, "")
        .await
        .map_err(|e| AuthzError::Polkit(e.to_string()))?;
    if r.is_authorized {
        Ok(())
    } else {
        Err(AuthzError::Denied {
            action: action.to_owned(),
        })
    }
}
