//! The migration's durable activity state (`migrations.state`): typed records, one per concern.
//!
//! Each concern is one serde type that implements [`Record`], owned by the crate that writes it
//! (the activities' records live in `dmf-activities`; the ones the control plane itself reads are
//! here). A record is read whole through [`State::get`] and written whole through a [`Patch`];
//! every field has a default, so a row written by an older dmf, which lacks newer fields, loads.
//! Nothing outside this module reads or writes the JSON by key or path.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Where a record lives in the state object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Under its own key.
    Key(&'static str),
    /// Its fields are top-level keys (records from before the state was typed keep their layout).
    Top,
}

/// One concern of the durable state.
pub trait Record: Serialize + DeserializeOwned + Default {
    const PLACE: Place;
}

/// The whole state of one migration, as stored. Read it through [`State::get`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct State(serde_json::Value);

impl State {
    /// The record `R`: its default when the state has none, an error when what is stored does not
    /// parse as `R`. A field stored as null reads as its default (older dmf wrote nulls for
    /// absent lists, as in `"undone": null`).
    pub fn get<R: Record>(&self) -> Result<R, Error> {
        let value = match R::PLACE {
            Place::Key(key) => match self.0.get(key) {
                None | Some(serde_json::Value::Null) => return Ok(R::default()),
                Some(v) => v,
            },
            Place::Top if self.0.is_object() => &self.0,
            Place::Top => return Ok(R::default()),
        };
        let value = match value {
            serde_json::Value::Object(fields) => {
                serde_json::Value::Object(fields.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect())
            }
            other => other.clone(),
        };
        serde_json::from_value(value).map_err(|e| Error::Corrupt(format!("migration state {}: {e}", place_name::<R>())))
    }

    /// The record `R` of `cluster`'s state, an error naming the cluster when it does not parse.
    pub fn record_of<R: Record>(&self, cluster: &str) -> Result<R, Error> {
        self.get::<R>().map_err(|e| Error::Corrupt(format!("cluster {cluster}: {e}")))
    }

    /// This state with `patch` merged in, as the control plane merges it.
    pub fn merged(&self, patch: &Patch) -> State {
        let mut out = match &self.0 {
            serde_json::Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        for (k, v) in &patch.0 {
            out.insert(k.clone(), v.clone());
        }
        State(serde_json::Value::Object(out))
    }

    /// A state from its stored JSON (tests of older layouts, the control plane's rows).
    pub fn from_json(value: serde_json::Value) -> State {
        State(value)
    }
}

fn place_name<R: Record>() -> String {
    match R::PLACE {
        Place::Key(k) => format!("{k:?}"),
        Place::Top => std::any::type_name::<R>().rsplit("::").next().unwrap_or("record").to_string(),
    }
}

/// Records to write, each whole: the top-level keys they own are replaced, the others kept.
#[derive(Debug, Clone, Default)]
pub struct Patch(serde_json::Map<String, serde_json::Value>);

impl Patch {
    pub fn of<R: Record>(record: &R) -> Patch {
        Patch::default().and(record)
    }

    /// Add `record` to this patch.
    pub fn and<R: Record>(mut self, record: &R) -> Patch {
        // A record is a plain struct of serde types: it always serializes to an object.
        let value = serde_json::to_value(record).unwrap_or(serde_json::Value::Null);
        match R::PLACE {
            Place::Key(key) => {
                self.0.insert(key.to_string(), value);
            }
            Place::Top => {
                if let serde_json::Value::Object(fields) = value {
                    self.0.extend(fields);
                }
            }
        }
        self
    }

    pub(crate) fn into_json(self) -> serde_json::Value {
        serde_json::Value::Object(self.0)
    }
}

/// Slots dropped because the migration sat in `failed` before the flip for too long (written by
/// the worker's reconciler, read by `resume`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DroppedSlots {
    pub at: Option<DateTime<Utc>>,
    pub slots: Vec<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SlotsDropped {
    pub slots_dropped: Option<DroppedSlots>,
}

impl Record for SlotsDropped {
    const PLACE: Place = Place::Top;
}

/// Replication back to the source after the flip (written by the soak, read by the rollback rule).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Reverse {
    /// The source's subscription to the target exists (None: the soak has not looked yet).
    pub subscribed: Option<bool>,
    /// Kept at completion, so that a completed migration can still roll back without loss.
    pub kept: bool,
    /// How long traffic soaked on the target.
    pub soaked_s: Option<u64>,
}

impl Record for Reverse {
    const PLACE: Place = Place::Key("reverse");
}

/// When the current hydration attempt started copying (for `dmf status`'s rate and ETA).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CopyClock {
    pub copy_started_at: Option<DateTime<Utc>>,
}

impl Record for CopyClock {
    const PLACE: Place = Place::Top;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Nested {
        a: Option<String>,
        b: u32,
    }
    impl Record for Nested {
        const PLACE: Place = Place::Key("nested");
    }

    #[test]
    fn missing_records_and_fields_load_as_defaults() {
        let state = State::from_json(serde_json::json!({ "nested": { "b": 3 }, "other": 1 }));
        assert_eq!(state.get::<Nested>().unwrap(), Nested { a: None, b: 3 });
        assert_eq!(State::default().get::<Nested>().unwrap(), Nested::default());
        assert_eq!(State::default().get::<CopyClock>().unwrap(), CopyClock::default());
    }

    #[test]
    fn a_patch_replaces_its_own_keys_only() {
        let state = State::from_json(serde_json::json!({ "nested": { "a": "x", "b": 1 }, "reverse": { "kept": true } }));
        let merged = state.merged(&Patch::of(&Nested { a: None, b: 2 }));
        assert_eq!(merged.get::<Nested>().unwrap(), Nested { a: None, b: 2 });
        assert!(merged.get::<Reverse>().unwrap().kept);
    }

    #[test]
    fn fields_stored_as_null_read_as_defaults() {
        #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
        #[serde(default)]
        struct WithList {
            items: Vec<String>,
            on: bool,
        }
        impl Record for WithList {
            const PLACE: Place = Place::Key("with_list");
        }
        let state = State::from_json(serde_json::json!({ "with_list": { "items": null, "on": null } }));
        assert_eq!(state.get::<WithList>().unwrap(), WithList::default());
    }

    #[test]
    fn a_record_that_does_not_parse_is_an_error_naming_it() {
        let state = State::from_json(serde_json::json!({ "nested": { "b": "three" } }));
        let e = state.get::<Nested>().unwrap_err().to_string();
        assert!(e.contains("\"nested\""), "{e}");
    }
}
