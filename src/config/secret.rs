//! A configuration value that must never be printed: masked in `Debug`, in
//! `kiln config check` and in logs; read only through [`Secret::expose`].

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A printable form: URLs keep everything but their password, anything else is
    /// replaced whole.
    pub fn masked(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) if self.0.contains("://") => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("********"));
                }
                url.to_string()
            }
            _ if self.0.is_empty() => String::new(),
            _ => "********".to_owned(),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({})", self.masked())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.masked())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_url_passwords_and_plain_secrets() {
        assert_eq!(
            Secret::new("postgres://kiln:hunter2@db:5432/kiln").masked(),
            "postgres://kiln:********@db:5432/kiln"
        );
        assert_eq!(Secret::new("sk-abcdef").masked(), "********");
        assert!(!format!("{:?}", Secret::new("sk-abcdef")).contains("abcdef"));
    }
}
