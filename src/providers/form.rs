//! How a channel's settings are described to a form (the admin console's channel
//! editor): the fields every channel has, and per provider type its `options` — each
//! with its type, default and help — its secret, the kinds its models may have, and its
//! default base URL. Each provider module describes its own type; [`super::Registry`]
//! holds the descriptions beside the factories.

use serde::Serialize;
use serde_json::{Value, json};

use crate::tasks::TaskKind;

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    Text,
    /// An http(s) URL.
    Url,
    /// Text like `500ms`, `30s`, `5m`.
    Duration,
    Integer,
    Number,
    Bool,
    /// One of `choices`.
    Choice,
    /// A list of text (or URLs).
    List,
    /// A JSON object.
    Object,
    /// The channel's models: `{ name, kind, upstream?, description? }` each.
    Models,
}

/// One field of a form.
#[derive(Debug, Clone, Serialize)]
pub struct Field {
    /// The key in the channel's configuration (`options.` fields are under `options`).
    pub key: String,
    #[serde(rename = "type")]
    pub kind: FieldType,
    pub required: bool,
    /// The value used when the field is left out (`null`: none).
    pub default: Value,
    /// The allowed values of a [`FieldType::Choice`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    pub help: String,
}

impl Field {
    pub fn new(key: &str, kind: FieldType, default: Value, help: &str) -> Self {
        Self { key: key.to_owned(), kind, required: false, default, choices: Vec::new(), help: help.to_owned() }
    }

    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    pub fn choices(mut self, choices: &[&str]) -> Self {
        self.choices = choices.iter().map(|c| (*c).to_owned()).collect();
        self
    }
}

/// The channel's secret, as a provider type uses it. Write-only: a form never gets it
/// back, only a mask.
#[derive(Debug, Clone, Serialize)]
pub struct SecretField {
    pub required: bool,
    pub label: String,
    pub help: String,
}

/// A base URL a provider type knows, with a label (Tripo's regions).
#[derive(Debug, Clone, Serialize)]
pub struct NamedUrl {
    pub label: String,
    pub url: String,
}

/// One provider type's form.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderForm {
    #[serde(rename = "type")]
    pub provider: String,
    pub title: String,
    /// The kinds its models may have.
    pub kinds: Vec<TaskKind>,
    /// `None`: it takes no secret.
    pub secret: Option<SecretField>,
    /// The base URL used when `options.base_url` is left out (`None`: no such option).
    pub default_base_url: Option<String>,
    /// Other base URLs it knows, by label.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub base_urls: Vec<NamedUrl>,
    /// Its `options`.
    pub options: Vec<Field>,
}

/// The fields every channel has, whatever its type, with the defaults a channel gets
/// when they are left out.
pub fn channel_fields() -> Vec<Field> {
    use FieldType as T;
    vec![
        Field::new(
            "name",
            T::Text,
            Value::Null,
            "Unique; kept on every task, so it cannot change once the channel is made.",
        )
        .required(),
        Field::new("type", T::Text, Value::Null, "The provider type.").required(),
        Field::new(
            "models",
            T::Models,
            Value::Null,
            "The models it serves: the name clients ask for, its kind, and the provider's own name (upstream).",
        )
        .required(),
        Field::new("enabled", T::Bool, json!(true), "A disabled channel takes no new tasks; its queue waits."),
        Field::new("max_concurrency", T::Integer, json!(1), "Tasks run at once (at least 1)."),
        Field::new("max_queue", T::Integer, json!(5), "Tasks allowed to wait; one more is refused with 503."),
        Field::new("priority", T::Integer, json!(0), "Higher is tried first when several channels serve a model."),
        Field::new("weight", T::Integer, json!(1), "Among equal priority, its share of new tasks (0: only overflow)."),
        Field::new("deadline", T::Duration, Value::Null, "How long a task may run here; default tasks.deadline."),
        Field::new("defaults", T::Object, json!({}), "Parameters filled in when a request leaves them out."),
        Field::new("overrides", T::Object, json!({}), "Parameters forced whatever the request says."),
        Field::new("client_keys", T::Bool, json!(false), "Whether a client may send its own provider key."),
        Field::new("breaker.failures", T::Integer, json!(3), "Failed submissions in a row that rest the channel."),
        Field::new("breaker.cooldown", T::Duration, json!("30s"), "How long a rested channel takes no new tasks."),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChannelConfig;

    #[test]
    fn the_forms_defaults_are_a_channels_defaults() {
        let minimal: ChannelConfig =
            toml::from_str("name = \"c\"\ntype = \"t\"\nmodels = []\n").expect("a channel with every default");
        let filled = serde_json::to_value(&minimal).expect("json");
        for field in channel_fields().iter().filter(|f| !f.required) {
            let value = field.key.split('.').fold(&filled, |v, part| &v[part]);
            assert_eq!(&field.default, value, "{}", field.key);
        }
    }
}
