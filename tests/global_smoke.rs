//! Smoke test: std collections with magpie as the global allocator.
#[global_allocator]
static A: magpie::Magpie = magpie::Magpie;

#[test]
fn collections_work() {
    let mut v: Vec<Box<u64>> = (0..100_000).map(Box::new).collect();
    let s: u64 = v.iter().map(|b| **b).sum();
    assert_eq!(s, 99_999 * 100_000 / 2);
    v.truncate(10);
    let mut m = std::collections::HashMap::new();
    for i in 0..50_000u32 {
        m.insert(i.to_string(), vec![i as u8; (i % 100) as usize]);
    }
    assert_eq!(m["4242"].len(), 42);
    let big = vec![7u8; 10 << 20];
    assert_eq!(big[(10 << 20) - 1], 7);
    let st = magpie::stats();
    assert!(st.allocations > 150_000, "{st:?}");
    eprintln!("{}", st.cache_mode);
}
