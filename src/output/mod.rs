//! What a graded slide becomes: [`report`] (`result.json` and the output folder),
//! [`images`] (heatmap PNGs and the overlay), [`tables`] (tile CSV and GeoJSON) and
//! [`lims`] (FHIR R4 and HL7 v2 messages for a laboratory information system).

pub mod images;
pub mod lims;
pub mod report;
pub mod tables;

/// The namespace of slidegrade's name-based ids (a fixed random UUID).
const ID_NAMESPACE: uuid::Uuid = uuid::uuid!("5b0f8e2c-7d43-4c1e-9a57-1f3c2b9d6e81");

/// A UUID that depends only on `name` (RFC 9562 version 5, name-based), so that the same
/// result always gets the same ids and two exports can be matched object by object.
pub fn name_based_id(name: &str) -> String {
    uuid::Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).to_string()
}
