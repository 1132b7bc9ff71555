//! Per-tile results for other tools, one row or feature per tile:
//!
//! - [`write_tiles_csv`]: WSInfer's CSV columns;
//! - [`write_tiles_geojson`]: GeoJSON that QuPath imports (File ▸ Import objects),
//!   classified by the most likely class.
//!
//! Coordinates are level-0 pixels with the origin at the top left and y pointing down,
//! the convention of both WSInfer and QuPath.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use super::images::{RenderError, class_colour, io_error};
use crate::grade::tiling::TileSpec;
use crate::model::engine::TileOutput;

/// Every tile must carry one probability per class: a mismatch means the caller mixed
/// up models, and a file with shifted columns would be silently wrong.
fn check_tiles(classes: &[String], tiles: &[(TileSpec, TileOutput)]) -> Result<(), RenderError> {
    for (tile, output) in tiles {
        if output.probabilities.len() != classes.len() {
            return Err(RenderError::BadInput(format!(
                "tile ({}, {}) has {} probabilities for {} classes",
                tile.col,
                tile.row,
                output.probabilities.len(),
                classes.len()
            )));
        }
    }
    Ok(())
}

/// One CSV field, quoted as RFC 4180 says when it holds a comma, a quote or a line
/// break, so an odd class name keeps its exact spelling in the header.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes one row per tile in WSInfer's model-output columns: `minx,miny,width,height`
/// (level-0 integer pixels, rounded) then `prob_<class>` per class in class order, as
/// WSInfer's `run_inference` writes them (its `DataFrame` with `prob_{name}` columns,
/// `to_csv(index=False)`), so tools built for WSInfer output read ours.
///
/// Probabilities are written in the shortest decimal form that parses back to the
/// same `f32` (Rust's `Display`), so the file loses nothing and stays short.
pub fn write_tiles_csv(
    path: &Path,
    classes: &[String],
    tiles: &[(TileSpec, TileOutput)],
) -> Result<(), RenderError> {
    check_tiles(classes, tiles)?;
    let mut out = String::with_capacity(64 + tiles.len() * (24 + 12 * classes.len()));
    out.push_str("minx,miny,width,height");
    for class in classes {
        out.push(',');
        out.push_str(&csv_field(&format!("prob_{class}")));
    }
    out.push('\n');
    for (tile, output) in tiles {
        let side = tile.side.round() as i64;
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            "{},{},{side},{side}",
            tile.x.round() as i64,
            tile.y.round() as i64
        );
        for p in &output.probabilities {
            let _ = write!(out, ",{p}");
        }
        out.push('\n');
    }
    std::fs::write(path, out).map_err(io_error(path))
}

/// `f32` as a JSON number in its shortest round-trip form: serde_json would widen it
/// to `f64` first and write `0.10000000149011612` for `0.1`.
fn json_f32(v: f32) -> Value {
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// A deterministic UUID per tile (name-based, version 5, from its grid position and
/// geometry). QuPath (≥ 0.4) keeps a feature's `id` only if
/// `UUID.fromString` accepts it and otherwise drops it and makes a random one, so a
/// plain tile index would be lost; a stable UUID lets two exports of the same grid be
/// matched object by object.
fn tile_uuid(tile: &TileSpec) -> String {
    super::name_based_id(&format!(
        "slidegrade tile {} {} {} {} {}",
        tile.col, tile.row, tile.x, tile.y, tile.side
    ))
}

/// QuPath refuses a classification name with a line break (`PathClass.fromString`
/// throws), so those become spaces.
fn qupath_class_name(name: &str) -> String {
    name.replace(['\n', '\r'], " ")
}

/// Writes a GeoJSON `FeatureCollection` with one square `Polygon` per tile (closed ring,
/// level-0 pixels, y down) that QuPath imports with File ▸ Import objects.
///
/// The properties follow what QuPath's own reader takes (qupath/qupath,
/// `qupath-core/src/main/java/qupath/lib/io/QuPathTypeAdapters.java`,
/// `PathObjectTypeAdapter.parseObject`, the same in `PathObjectTypeAdapters.java` of
/// v0.4):
/// - `"objectType": "tile"` makes a `PathTileObject`, a detection, so thousands of
///   tiles stay light and can be shown/hidden with the detections. Without
///   `objectType` QuPath would make an annotation per tile.
/// - `"classification": {"name", "color": [r, g, b]}`: the argmax class, coloured by
///   [`class_colour`]; this is the form QuPath ≥ 0.4 writes in its own exports.
/// - `"measurements"`: an object `{"prob_<class>": number}`. QuPath ≥ 0.4 writes and
///   reads this form; its reader still accepts the pre-0.4 array of `{name, value}`,
///   but the object is the current one. Non-finite values are left out: JSON has no
///   NaN and QuPath's measurement map takes only numbers.
/// - `"id"`: a deterministic UUID (see [`tile_uuid`]).
pub fn write_tiles_geojson(
    path: &Path,
    classes: &[String],
    tiles: &[(TileSpec, TileOutput)],
    tile_classes: &[usize],
) -> Result<(), RenderError> {
    check_tiles(classes, tiles)?;
    if tile_classes.len() != tiles.len() {
        return Err(RenderError::BadInput(format!(
            "{} tiles but {} tile classes",
            tiles.len(),
            tile_classes.len()
        )));
    }
    let features: Vec<Value> = tiles
        .iter()
        .zip(tile_classes)
        .map(|((tile, output), &class)| {
            let (x0, y0) = (tile.x, tile.y);
            let (x1, y1) = (tile.x + tile.side, tile.y + tile.side);
            let ring = json!([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]);
            let measurements: serde_json::Map<String, Value> = classes
                .iter()
                .zip(&output.probabilities)
                .filter(|(_, p)| p.is_finite())
                .map(|(class, &p)| (format!("prob_{class}"), json_f32(p)))
                .collect();
            let mut properties = json!({
                "objectType": "tile",
                "measurements": measurements,
            });
            if let Some(name) = classes.get(class) {
                properties["classification"] = json!({
                    "name": qupath_class_name(name),
                    "color": class_colour(name, class),
                });
            }
            json!({
                "type": "Feature",
                "id": tile_uuid(tile),
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": properties,
            })
        })
        .collect();
    let doc = json!({"type": "FeatureCollection", "features": features});
    let bytes = serde_json::to_vec(&doc)
        .map_err(|e| RenderError::BadInput(format!("cannot serialise GeoJSON: {e}")))?;
    std::fs::write(path, bytes).map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn classes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn sample_tiles() -> Vec<(TileSpec, TileOutput)> {
        let t0 = TileSpec {
            col: 0,
            row: 0,
            x: 0.0,
            y: 0.0,
            side: 1026.052,
            tissue_fraction: 0.9,
        };
        let t1 = TileSpec {
            col: 3,
            row: 1,
            x: 3078.156,
            y: 1026.052,
            side: 1026.052,
            tissue_fraction: 0.5,
        };
        let o0 = TileOutput {
            logits: vec![],
            probabilities: vec![0.123_456_79, 0.7, 1e-7, 0.176_543_2],
            cam: vec![],
            attention: vec![],
        };
        let o1 = TileOutput {
            logits: vec![],
            probabilities: vec![0.01, 0.02, 0.9, 0.07],
            cam: vec![],
            attention: vec![],
        };
        vec![(t0, o0), (t1, o1)]
    }

    #[test]
    fn csv_has_wsinfer_columns_and_parses_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiles.csv");
        let names = classes(&["NC", "G3", "G4", "G5"]);
        let tiles = sample_tiles();
        write_tiles_csv(&path, &names, &tiles).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "minx,miny,width,height,prob_NC,prob_G3,prob_G4,prob_G5"
        );
        let rows: Vec<&str> = lines.collect();
        assert_eq!(rows.len(), 2);
        let fields: Vec<&str> = rows[1].split(',').collect();
        assert_eq!(fields[..4], ["3078", "1026", "1026", "1026"]);
        for (row, (_, output)) in rows.iter().zip(&tiles) {
            let probs: Vec<f32> = row.split(',').skip(4).map(|f| f.parse().unwrap()).collect();
            assert_eq!(probs, output.probabilities);
        }
        assert!(
            rows.iter().all(|r| !r.contains('e')),
            "no exponents: {text}"
        );
    }

    #[test]
    fn csv_quotes_odd_class_names_and_refuses_mismatched_rows() {
        assert_eq!(csv_field("prob_G4"), "prob_G4");
        assert_eq!(csv_field("prob_a,\"b\""), "\"prob_a,\"\"b\"\"\"");
        let dir = tempfile::tempdir().unwrap();
        let err = write_tiles_csv(
            &dir.path().join("x.csv"),
            &classes(&["a", "b"]),
            &sample_tiles(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), "bad_input");
    }

    #[test]
    fn geojson_is_a_qupath_feature_collection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiles.geojson");
        let names = classes(&["NC", "G3", "G4", "G5"]);
        let tiles = sample_tiles();
        // The classification is the grader's class (here not the argmax: G4 and G3 would
        // be), the measurements the model's probabilities.
        let tile_classes = [3, 1];
        write_tiles_geojson(&path, &names, &tiles, &tile_classes).unwrap();
        let err = write_tiles_geojson(&path, &names, &tiles, &[3]).unwrap_err();
        assert_eq!(err.kind(), "bad_input");
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["type"], "FeatureCollection");
        let features = doc["features"].as_array().unwrap();
        assert_eq!(features.len(), tiles.len());

        let mut ids = HashSet::new();
        for (feature, ((spec, output), class)) in
            features.iter().zip(tiles.iter().zip(["G5", "G3"]))
        {
            assert_eq!(feature["type"], "Feature");
            let id = feature["id"].as_str().unwrap();
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
            assert_eq!(&id[14..15], "5", "version-5 UUID: {id}");
            assert!(ids.insert(id.to_string()), "ids are unique");

            assert_eq!(feature["geometry"]["type"], "Polygon");
            let ring = feature["geometry"]["coordinates"][0].as_array().unwrap();
            assert_eq!(ring.len(), 5);
            assert_eq!(ring[0], ring[4], "ring is closed");
            let xy = |i: usize| -> (f64, f64) {
                (ring[i][0].as_f64().unwrap(), ring[i][1].as_f64().unwrap())
            };
            assert_eq!(xy(0), (spec.x, spec.y));
            assert_eq!(xy(2), (spec.x + spec.side, spec.y + spec.side));

            let props = &feature["properties"];
            assert_eq!(props["objectType"], "tile");
            assert_eq!(props["classification"]["name"], class);
            let colour = class_colour(class, 0);
            assert_eq!(props["classification"]["color"], json!(colour));
            let m = props["measurements"].as_object().unwrap();
            assert_eq!(m.len(), names.len());
            for (name, p) in names.iter().zip(&output.probabilities) {
                let v = m[&format!("prob_{name}")].as_f64().unwrap();
                assert_eq!(v as f32, *p, "prob_{name}");
            }
        }
        // The same grid gives the same ids: exports can be matched across runs.
        let again = dir.path().join("again.geojson");
        write_tiles_geojson(&again, &names, &tiles, &tile_classes).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&again).unwrap()
        );
    }
}
