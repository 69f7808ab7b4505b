#[global_allocator]
static A: magpie::Magpie = magpie::Magpie;
use magpie::Gc;
struct Node {
    next: Option<Gc<Node>>,
    val: u64,
}
static mut ROOT: Option<Gc<Node>> = None;
fn main() {
    let mut head: Option<Gc<Node>> = None;
    for i in 0..100_000u64 {
        head = Some(Gc::new(Node { next: head, val: i }));
    }
    unsafe {
        ROOT = head;
    }
    for round in 0..200 {
        // garbage
        let mut g: Option<Gc<Node>> = None;
        for i in 0..10_000u64 {
            g = Some(Gc::new(Node { next: g, val: i }));
        }
        std::hint::black_box(&g);
        let mut leak = Vec::with_capacity(100);
        for i in 0..100 {
            leak.push(vec![i as u8; 1000]);
        }
        std::mem::forget(leak);
        if round % 50 == 0 {
            magpie::collect();
        }
    }
    magpie::collect();
    let mut n = 0;
    let mut cur = unsafe { ROOT };
    let mut expect = 99_999u64;
    while let Some(c) = cur {
        assert_eq!(c.val, expect);
        expect = expect.wrapping_sub(1);
        n += 1;
        cur = c.next;
    }
    assert_eq!(n, 100_000);
    let s = magpie::stats();
    println!(
        "ok: {} nodes; cycles {} reclaimed {} MiB rss {} MiB",
        n,
        s.gc.cycles,
        s.gc.reclaimed_bytes >> 20,
        s.resident_bytes >> 20
    );
    magpie::debug::verify_heap().unwrap();
}
