//! Levels of detail of relief's fixture models (closed meshes with a texture atlas):
//! the budget is met by collapsing edges, the surface stays closed, the box stays the
//! same within the reported error, UVs stay those of kept vertices, and the result
//! previews like the original.

use formats::{Cancel, Limits, Model, PreviewOptions};

fn relief_model(picture: &str) -> Model {
    let path =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/images").join(picture);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let glb = relief::reconstruct(&bytes, &relief::Options::default(), &mut |_, _| {}).expect("relief").glb;
    Model::read_glb(&glb, &Limits::default(), &Cancel::new()).expect("reads")
}

#[test]
fn relief_models_simplify_to_the_budget_and_stay_closed() {
    for picture in ["vase.png", "mug.jpg"] {
        let model = relief_model(picture);
        assert!(model.welded_is_closed(), "{picture}: relief's models are closed");
        let budget = 5_000;
        let (lod, report) = formats::simplify(&model, budget, &Cancel::new()).expect("simplified");
        assert!(lod.triangles() <= budget && lod.triangles() >= budget / 2, "{picture}: {report:?}");
        assert_eq!(report.clustered_parts, 0, "{picture}: edge collapse alone reached the budget");
        assert!(lod.welded_is_closed(), "{picture}: the level of detail is still closed");
        let ((min, max), (lod_min, lod_max)) = (model.bounds().expect("box"), lod.bounds().expect("box"));
        let extent = (0..3).map(|k| max[k] - min[k]).fold(0.0f32, f32::max);
        for k in 0..3 {
            // Collapses keep original vertices, so the box can only shrink, by at most the error.
            assert!(lod_min[k] >= min[k] && lod_max[k] <= max[k], "{picture}");
            let slack = extent * (report.error + 0.01);
            assert!(lod_min[k] - min[k] <= slack && max[k] - lod_max[k] <= slack, "{picture}: {report:?}");
        }
        let options = PreviewOptions { size: 128 };
        let (a, b) = (
            formats::preview(&model, &options, &Cancel::new()).expect("preview"),
            formats::preview(&lod, &options, &Cancel::new()).expect("preview"),
        );
        let covered = |p: &image::RgbaImage| p.pixels().filter(|p| p.0[3] > 0).count() as f64;
        let change = (covered(&a) - covered(&b)).abs() / covered(&a);
        assert!(change < 0.03, "{picture}: the silhouette changed by {change}");
    }
}
