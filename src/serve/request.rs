//! The JSON body of a prediction request, parsed straight into one flat
//! buffer of features.

/// The JSON request body, `{"inputs": [[...], ...]}`, parsed straight into
/// one flat buffer of features with room for a row reserved before each
/// row: a `Vec<Vec<f32>>` grows one allocation per row from nothing, and
/// parsing was a quarter of the server's time per request.
pub(super) struct FlatRequest {
    pub(super) features: Vec<f32>,
    pub(super) rows: usize,
    /// The first row whose length is not `inputs`: (row, length).
    pub(super) first_bad: Option<(usize, usize)>,
}

impl FlatRequest {
    pub(super) fn parse(body: &[u8], inputs: usize) -> serde_json::Result<Self> {
        use serde::de::Deserializer as _;
        let mut de = serde_json::Deserializer::from_slice(body);
        let req = de.deserialize_map(flat::Request { inputs })?;
        de.end()?;
        Ok(req)
    }
}

/// The serde visitors of [`FlatRequest`].
mod flat {
    use std::fmt;

    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use serde::Deserialize;

    use super::FlatRequest;

    #[derive(Deserialize)]
    #[serde(field_identifier, rename_all = "lowercase")]
    enum Field {
        Inputs,
    }

    /// The top-level object: `inputs` and nothing else.
    pub(super) struct Request {
        pub(super) inputs: usize,
    }

    impl<'de> Visitor<'de> for Request {
        type Value = FlatRequest;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object with `inputs`")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FlatRequest, A::Error> {
            let mut req = None;
            while let Some(Field::Inputs) = map.next_key()? {
                if req.is_some() {
                    return Err(de::Error::duplicate_field("inputs"));
                }
                req = Some(map.next_value_seed(Rows { inputs: self.inputs })?);
            }
            req.ok_or_else(|| de::Error::missing_field("inputs"))
        }
    }

    /// `inputs`: rows of numbers, appended to one buffer.
    struct Rows {
        inputs: usize,
    }

    impl<'de> DeserializeSeed<'de> for Rows {
        type Value = FlatRequest;

        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<FlatRequest, D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for Rows {
        type Value = FlatRequest;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of rows")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FlatRequest, A::Error> {
            let mut req = FlatRequest {
                features: Vec::new(),
                rows: 0,
                first_bad: None,
            };
            loop {
                req.features.reserve(self.inputs);
                let Some(len) = seq.next_element_seed(Row(&mut req.features))? else {
                    break;
                };
                if len != self.inputs && req.first_bad.is_none() {
                    req.first_bad = Some((req.rows, len));
                }
                req.rows += 1;
            }
            Ok(req)
        }
    }

    /// One row: its numbers appended to the buffer; the value is how many.
    struct Row<'a>(&'a mut Vec<f32>);

    impl<'de> DeserializeSeed<'de> for Row<'_> {
        type Value = usize;

        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for Row<'_> {
        type Value = usize;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of numbers")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
            let start = self.0.len();
            while let Some(v) = seq.next_element::<f32>()? {
                self.0.push(v);
            }
            Ok(self.0.len() - start)
        }
    }
}
