//! The model variants a report compares: the unedited base model and one edit per method. Their
//! names (`base`, `lsdm`, `ft`, `dama`) are stage-name suffixes and keys of the stage outputs, so
//! they are spelled in one place, here and in [`Method::name`].

use crate::edit::method::Method;
use crate::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A model variant of the report's tables: the base model or the edit of one method.
/// Serialised as its name (`base`, `lsdm`, ...), like the strings it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportVariant {
    /// The loaded model, unedited.
    Base,
    /// The base model edited by one method with the spec's hyperparameters.
    Method(Method),
}

impl ReportVariant {
    /// Every variant in the fixed column order of the tables: base, lsdm, ft, dama, then the
    /// methods a report spec does not run.
    pub const ORDER: [ReportVariant; 6] = [
        ReportVariant::Base,
        ReportVariant::Method(Method::Lsdm),
        ReportVariant::Method(Method::Ft),
        ReportVariant::Method(Method::Dama),
        ReportVariant::Method(Method::Probe),
        ReportVariant::Method(Method::Tune),
    ];

    /// Stage-name suffix and key in the stage outputs (`measure_base`, `edit_lsdm`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            ReportVariant::Base => "base",
            ReportVariant::Method(m) => m.name(),
        }
    }

    /// Display name in table headers and figure legends.
    pub const fn label(self) -> &'static str {
        match self {
            ReportVariant::Base => "Base",
            ReportVariant::Method(Method::Lsdm) => "LSDM",
            ReportVariant::Method(Method::Ft) => "FT-L",
            ReportVariant::Method(Method::Dama) => "DAMA",
            ReportVariant::Method(Method::Probe) => "Probe",
            ReportVariant::Method(Method::Tune) => "Tune",
        }
    }

    /// The variant named `name`; None for anything else (e.g. a sweep point `lsdm_lambda_0`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ORDER.into_iter().find(|v| v.name() == name)
    }

    /// Position in [`Self::ORDER`].
    pub fn rank(self) -> usize {
        Self::ORDER
            .iter()
            .position(|&v| v == self)
            .unwrap_or(Self::ORDER.len())
    }
}

impl std::fmt::Display for ReportVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ReportVariant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_name(s).ok_or_else(|| {
            let names: Vec<&str> = Self::ORDER.iter().map(|v| v.name()).collect();
            Error::param(
                "variant",
                format!("`{s}`: expected one of {}", names.join(", ")),
            )
        })
    }
}

impl Serialize for ReportVariant {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ReportVariant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_serialise_as_strings() {
        for v in ReportVariant::ORDER {
            assert_eq!(ReportVariant::from_name(v.name()), Some(v));
            assert_eq!(
                serde_json::to_string(&v).unwrap(),
                format!("\"{}\"", v.name())
            );
            let back: ReportVariant = serde_json::from_str(&format!("\"{v}\"")).unwrap();
            assert_eq!(back, v);
        }
        let names: Vec<&str> = ReportVariant::ORDER[..4].iter().map(|v| v.name()).collect();
        assert_eq!(names, ["base", "lsdm", "ft", "dama"]);
        assert_eq!(ReportVariant::from_name("lsdm_lambda_0"), None);
        let e = "zz".parse::<ReportVariant>().unwrap_err().to_string();
        assert!(
            e.contains("zz") && e.contains("base") && e.contains("dama"),
            "{e}"
        );
    }
}
