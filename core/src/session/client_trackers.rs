//! What a client would see of the server's session trackers without ferry.
//!
//! ferry switches every tracker on for itself (see
//! [`crate::login::backend::TRACKER_SETUP`]); a client that negotiated
//! `CLIENT_SESSION_TRACK` must still see only the entries its own settings ask
//! for. These are the settings the backend had before ferry changed them.

use std::collections::BTreeSet;

use crate::packets::TrackItem;

/// Which system variables are tracked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackedVariables {
    /// `*`: all of them.
    All,
    /// A list of names (lowercase).
    Named(BTreeSet<String>),
}

/// `session_track_transaction_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TransactionInfo {
    /// Not tracked.
    Off,
    /// The state string.
    State,
    /// The state string and the characteristics.
    Characteristics,
}

/// A session's `session_track_*` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackingSettings {
    /// `session_track_system_variables`.
    pub variables: TrackedVariables,
    /// `session_track_schema`.
    pub schema: bool,
    /// `session_track_state_change`.
    pub state_change: bool,
    /// `session_track_transaction_info`.
    pub transaction_info: TransactionInfo,
}

impl Default for TrackingSettings {
    /// MariaDB's defaults.
    fn default() -> Self {
        TrackingSettings {
            variables: TrackedVariables::parse(
                "autocommit,character_set_client,character_set_connection,character_set_results,time_zone",
            ),
            schema: true,
            state_change: false,
            transaction_info: TransactionInfo::Off,
        }
    }
}

/// The query that reads the settings, in the order [`TrackingSettings::from_values`] takes them.
pub const SETTINGS_QUERY: &str =
    "SELECT @@session_track_system_variables, @@session_track_schema, \
@@session_track_state_change, @@session_track_transaction_info";

impl TrackedVariables {
    /// Parses a `session_track_system_variables` value.
    pub fn parse(value: &str) -> Self {
        let names: BTreeSet<String> = value
            .split(',')
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        if names.contains("*") {
            TrackedVariables::All
        } else {
            TrackedVariables::Named(names)
        }
    }

    fn includes(&self, name: &[u8]) -> bool {
        match self {
            TrackedVariables::All => true,
            TrackedVariables::Named(names) => {
                names.contains(&String::from_utf8_lossy(name).to_ascii_lowercase())
            }
        }
    }
}

fn on(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "TRUE"
    )
}

fn transaction_info(value: &str) -> TransactionInfo {
    match value.trim().to_ascii_uppercase().as_str() {
        "STATE" | "1" => TransactionInfo::State,
        "CHARACTERISTICS" | "2" => TransactionInfo::Characteristics,
        _ => TransactionInfo::Off,
    }
}

impl TrackingSettings {
    /// Settings from the four values of [`SETTINGS_QUERY`] (NULL for a variable the server lacks).
    pub fn from_values(values: &[Option<String>]) -> Self {
        let get = |i: usize| values.get(i).cloned().flatten();
        let defaults = TrackingSettings::default();
        TrackingSettings {
            variables: get(0).map_or(defaults.variables, |v| TrackedVariables::parse(&v)),
            schema: get(1).map_or(defaults.schema, |v| on(&v)),
            state_change: get(2).map_or(defaults.state_change, |v| on(&v)),
            transaction_info: get(3).map_or(defaults.transaction_info, |v| transaction_info(&v)),
        }
    }

    /// Follows a change of one of the settings themselves (the client ran `SET session_track_...`).
    /// Returns true if `item` was such a change.
    pub fn follow(&mut self, item: &TrackItem) -> bool {
        let TrackItem::SystemVariable { name, value } = item else {
            return false;
        };
        let value = String::from_utf8_lossy(value);
        match name.to_ascii_lowercase().as_slice() {
            b"session_track_system_variables" => self.variables = TrackedVariables::parse(&value),
            b"session_track_schema" => self.schema = on(&value),
            b"session_track_state_change" => self.state_change = on(&value),
            b"session_track_transaction_info" => self.transaction_info = transaction_info(&value),
            _ => return false,
        }
        true
    }

    /// Whether a client with these settings would have been sent `item`.
    pub fn shows(&self, item: &TrackItem) -> bool {
        match item {
            TrackItem::SystemVariable { name, .. } => self.variables.includes(name),
            TrackItem::Schema(_) => self.schema,
            TrackItem::StateChange(_) => self.state_change,
            TrackItem::TransactionState(_) => self.transaction_info >= TransactionInfo::State,
            TrackItem::TransactionCharacteristics(_) => {
                self.transaction_info == TransactionInfo::Characteristics
            }
            TrackItem::Other(..) => true,
        }
    }
}
