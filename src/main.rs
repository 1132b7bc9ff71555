fn main() {
    println!("{}", openslide_rs::OpenSlide::version().unwrap());
    let s = openslide_rs::OpenSlide::new("../shared/data/slides/camelyon-multiframe.dcm").unwrap();
    println!("{:?}", s.all_level_dimensions());
}
