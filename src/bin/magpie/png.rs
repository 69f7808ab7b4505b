//! A minimal PNG encoder: 8-bit palette (or RGB past 256 colours), no
//! filtering; the zlib stream is deflate with the fixed Huffman code and only
//! two kinds of match, repeats of the previous byte and of the byte one row
//! up, which is what flat-coloured charts are made of. `zlib_stored` (stored
//! blocks, no compression) is the fallback for data that does not shrink.

/// CRC-32 (ISO 3309, polynomial 0xEDB88320) as PNG chunks use it.
pub fn crc32(parts: &[&[u8]]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (n, e) in t.iter_mut().enumerate() {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = 0xFFFF_FFFFu32;
    for part in parts {
        for &b in *part {
            c = table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
        }
    }
    c ^ 0xFFFF_FFFF
}

/// Adler-32, zlib's checksum of the uncompressed data.
pub fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    let (mut a, mut b) = (1u32, 0u32);
    // 5552 bytes is the most that can be summed before b may overflow.
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += x as u32;
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

/// A zlib stream holding `data` in stored deflate blocks.
pub fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65535 * 5 + 16);
    out.extend_from_slice(&[0x78, 0x01]); // deflate, 32K window; 0x7801 % 31 == 0
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xFF, 0xFF]); // one empty final block
    }
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none();
        out.push(last as u8); // BFINAL, BTYPE = 00 (stored)
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

/// Writes bits least significant first, as deflate packs them.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, v: u32, n: u32) {
        self.acc |= (v as u64) << self.n;
        self.n += n;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code, sent most significant bit first.
    fn code(&mut self, code: u32, len: u32) {
        let rev = code.reverse_bits() >> (32 - len);
        self.put(rev, len);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// A literal or length symbol (0..=287) in the fixed Huffman code.
fn fixed_symbol(b: &mut Bits, sym: u32) {
    match sym {
        0..=143 => b.code(0x30 + sym, 8),
        144..=255 => b.code(0x190 + sym - 144, 9),
        256..=279 => b.code(sym - 256, 7),
        _ => b.code(0xC0 + sym - 280, 8),
    }
}

const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

fn emit_match(b: &mut Bits, len: usize, dist: usize) {
    let li = LEN_BASE.iter().rposition(|&x| x as usize <= len).unwrap();
    fixed_symbol(b, 257 + li as u32);
    b.put((len - LEN_BASE[li] as usize) as u32, LEN_EXTRA[li] as u32);
    let di = DIST_BASE.iter().rposition(|&x| x as usize <= dist).unwrap();
    b.code(di as u32, 5);
    b.put(
        (dist - DIST_BASE[di] as usize) as u32,
        DIST_EXTRA[di] as u32,
    );
}

/// A zlib stream of `data` in one fixed-Huffman deflate block whose matches
/// are at distance 1 or `stride` (≤ 32768; 0: distance 1 only).
pub fn zlib_rle(data: &[u8], stride: usize) -> Vec<u8> {
    let mut b = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        n: 0,
    };
    b.put(1, 1); // BFINAL
    b.put(1, 2); // BTYPE = 01, fixed Huffman
    let run = |i: usize, d: usize| -> usize {
        if d == 0 || i < d {
            return 0;
        }
        let max = (data.len() - i).min(258);
        (0..max)
            .take_while(|&k| data[i + k] == data[i + k - d])
            .count()
    };
    let stride = if stride <= 32768 { stride } else { 0 };
    let mut i = 0;
    while i < data.len() {
        let (l1, l2) = (run(i, 1), run(i, stride));
        let (len, dist) = if l2 > l1 { (l2, stride) } else { (l1, 1) };
        if len >= 3 {
            emit_match(&mut b, len, dist);
            i += len;
        } else {
            fixed_symbol(&mut b, data[i] as u32);
            i += 1;
        }
    }
    fixed_symbol(&mut b, 256); // end of block
    let mut out = b.finish();
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

/// The smaller of the compressed and the stored stream.
fn zlib(data: &[u8], stride: usize) -> Vec<u8> {
    let z = zlib_rle(data, stride);
    if z.len() < data.len() + 16 {
        z
    } else {
        zlib_stored(data)
    }
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
}

/// Encodes `rgb` (row-major, 3 bytes per pixel, `width * height` pixels) as
/// an 8-bit palette image when it has at most 256 colours, else as RGB.
pub fn encode_rgb(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    assert_eq!(rgb.len(), w * h * 3);
    let mut palette: Vec<[u8; 3]> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let mut indexed = Vec::with_capacity(w * h);
    for p in rgb.chunks(3) {
        let c = [p[0], p[1], p[2]];
        let i = *index.entry(c).or_insert_with(|| {
            palette.push(c);
            palette.len() - 1
        });
        if i > 255 {
            break;
        }
        indexed.push(i as u8);
    }
    let use_palette = palette.len() <= 256;
    let (pixels, bpp): (&[u8], usize) = if use_palette { (&indexed, 1) } else { (rgb, 3) };
    let mut raw = Vec::with_capacity(pixels.len() + h);
    for row in pixels.chunks((w * bpp).max(1)).take(h) {
        raw.push(0); // filter type: none
        raw.extend_from_slice(row);
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // bit depth 8, colour type 3 (palette) or 2 (RGB), deflate, adaptive
    // filtering, no interlace
    ihdr.extend_from_slice(&[8, if use_palette { 3 } else { 2 }, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    if use_palette {
        let plte: Vec<u8> = palette.iter().flatten().copied().collect();
        chunk(&mut out, b"PLTE", &plte);
    }
    chunk(&mut out, b"IDAT", &zlib(&raw, w * bpp + 1));
    chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_known_values() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"IEND"]), 0xAE42_6082);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    #[test]
    fn stored_blocks_split_at_64k() {
        let data = vec![7u8; 70_000];
        let z = zlib_stored(&data);
        assert_eq!(z.len(), 2 + 5 + 65535 + 5 + (70_000 - 65535) + 4);
        assert_eq!(z[2], 0);
        assert_eq!(z[2 + 5 + 65535], 1);
    }
}
