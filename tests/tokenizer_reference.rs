//! The GGUF-built tokenizers against transformers' ids (fixtures/reference/*/tokenization.jsonl),
//! the save_hf → from_hf_dir round trip, pronoun ids, and errors for a GGUF without a tokenizer.

mod common;

use biaslens::tokenizer::Tokenizer;
use candle_core::quantized::gguf_file;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Model {
    dir: &'static str,
    file: &'static str,
}

const SMOLLM2: Model = Model {
    dir: "smollm2-135m",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
};
const GEMMA3: Model = Model {
    dir: "gemma-3-270m",
    file: "gemma-3-270m-q4_k_m.gguf",
};

/// The model's GGUF file, fetched when it is missing (see `common::ensure_model`).
fn gguf_path(m: &Model) -> PathBuf {
    let p = common::ensure_model(m.dir);
    assert!(p.ends_with(m.file), "{} is not {}", p.display(), m.file);
    p
}

fn read_content(path: &Path) -> gguf_file::Content {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    gguf_file::Content::read(&mut f).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// CPU time of this thread (Linux schedstat), so the timing check holds on a busy machine;
/// wall-clock time where that is unavailable.
fn thread_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_nanos)
        .unwrap_or_else(|| {
            static START: OnceLock<Instant> = OnceLock::new();
            START.get_or_init(Instant::now).elapsed()
        })
}

/// Build once per model; also times the build (file metadata already in memory).
fn build(m: &Model) -> (Tokenizer, Duration) {
    let path = gguf_path(m);
    let content = read_content(&path);
    let start = thread_time();
    let tk = Tokenizer::from_gguf(&content, &path).unwrap_or_else(|e| panic!("{e}"));
    (tk, thread_time() - start)
}

fn smollm2() -> &'static (Tokenizer, Duration) {
    static T: OnceLock<(Tokenizer, Duration)> = OnceLock::new();
    T.get_or_init(|| build(&SMOLLM2))
}

fn gemma3() -> &'static (Tokenizer, Duration) {
    static T: OnceLock<(Tokenizer, Duration)> = OnceLock::new();
    T.get_or_init(|| build(&GEMMA3))
}

fn reference(m: &Model) -> Vec<(String, Vec<u32>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/reference")
        .join(m.dir)
        .join("tokenization.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1));
            let text = v["text"]
                .as_str()
                .unwrap_or_else(|| panic!("line {}: no text", i + 1));
            let ids = v["ids"]
                .as_array()
                .unwrap_or_else(|| panic!("line {}: no ids", i + 1))
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|x| x as u32)
                        .unwrap_or_else(|| panic!("line {}: bad id", i + 1))
                })
                .collect();
            (text.to_string(), ids)
        })
        .collect()
}

/// Every reference line must match; report the first few mismatches.
fn assert_matches_reference(tk: &Tokenizer, m: &Model) {
    let lines = reference(m);
    assert!(lines.len() > 5000, "reference for {} is too short", m.dir);
    let bad: Vec<String> = lines
        .iter()
        .filter_map(|(text, want)| {
            let got = tk.encode(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            (got != *want).then(|| format!("{text:?}: got {got:?}, want {want:?}"))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{}: {} of {} lines differ:\n{}",
        m.dir,
        bad.len(),
        lines.len(),
        bad[..bad.len().min(10)].join("\n")
    );
}

#[test]
fn smollm2_matches_transformers() {
    assert_matches_reference(&smollm2().0, &SMOLLM2);
}

#[test]
fn gemma3_matches_transformers() {
    assert_matches_reference(&gemma3().0, &GEMMA3);
}

#[test]
fn special_tokens_and_bos() {
    let (s, _) = smollm2();
    assert!(!s.adds_bos());
    assert_eq!(s.vocab_size(), 49152);
    assert_eq!(s.bos_id(), Some(1));
    assert_eq!(s.eos_id(), Some(2));
    let (g, _) = gemma3();
    assert!(g.adds_bos());
    assert_eq!(g.bos_id(), Some(2));
    assert_eq!(g.eos_id(), Some(1));
    assert_eq!(g.vocab_size(), 262144);
    assert_eq!(g.token_to_id("<bos>"), Some(2));
    assert_eq!(g.id_to_token(2).as_deref(), Some("<bos>"));
    assert_eq!(g.encode_plain("").expect("encode"), Vec::<u32>::new());
    // Special tokens written in the text are matched whole.
    assert_eq!(g.encode_plain("<eos>").expect("encode"), vec![1]);
}

#[test]
fn pronoun_ids() {
    let (s, _) = smollm2();
    let (g, _) = gemma3();
    for (tk, he, she, they) in [(s, 384, 1041, 502), (g, 668, 1304, 901)] {
        assert_eq!(tk.single_token_id(" he").expect("he"), he);
        assert_eq!(tk.single_token_id(" she").expect("she"), she);
        assert_eq!(tk.single_token_id(" they").expect("they"), they);
        let err = tk
            .single_token_id(" hexagonal xylophones")
            .expect_err("several tokens");
        assert!(err.to_string().contains("hexagonal xylophones"), "{err}");
    }
}

#[test]
fn decode_inverts_encode() {
    for (tk, _) in [smollm2(), gemma3()] {
        for text in [
            "The nurse said that",
            "naïve café — 100% ünïcode ✓",
            "  leading\tand\ntrailing ",
        ] {
            let ids = tk.encode_plain(text).expect("encode");
            assert_eq!(tk.decode(&ids).expect("decode"), text);
        }
    }
}

#[test]
fn save_hf_round_trip() {
    for (m, (tk, _)) in [(&SMOLLM2, smollm2()), (&GEMMA3, gemma3())] {
        let dir = tempfile::tempdir().expect("tempdir");
        tk.save_hf(dir.path()).expect("save_hf");
        for f in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            assert!(dir.path().join(f).is_file(), "{f} not written");
        }
        let back = Tokenizer::from_hf_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.adds_bos(), tk.adds_bos());
        assert_eq!(back.bos_id(), tk.bos_id());
        assert_eq!(back.eos_id(), tk.eos_id());
        assert_matches_reference(&back, m);
    }
}

fn write_gguf(path: &Path, metadata: &[(&str, &gguf_file::Value)]) {
    let mut f = std::fs::File::create(path).expect("create tiny gguf");
    gguf_file::write(&mut f, metadata, &[]).expect("write tiny gguf");
}

#[test]
fn gguf_without_tokenizer_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("no-tokenizer.gguf");
    let arch = gguf_file::Value::String("llama".into());
    write_gguf(&path, &[("general.architecture", &arch)]);
    let err = Tokenizer::from_gguf(&read_content(&path), &path).expect_err("no tokenizer metadata");
    let msg = err.to_string();
    assert!(
        msg.contains("no-tokenizer.gguf") && msg.contains("tokenizer.ggml.model"),
        "{msg}"
    );

    // A vocabulary but no merges for a byte-level model names the merges key.
    let model = gguf_file::Value::String("gpt2".into());
    let tokens = gguf_file::Value::Array(vec![gguf_file::Value::String("a".into())]);
    write_gguf(
        &path,
        &[
            ("general.architecture", &arch),
            ("tokenizer.ggml.model", &model),
            ("tokenizer.ggml.tokens", &tokens),
        ],
    );
    let msg = Tokenizer::from_gguf(&read_content(&path), &path)
        .expect_err("no merges")
        .to_string();
    assert!(msg.contains("tokenizer.ggml.merges"), "{msg}");

    // An unsupported tokenizer model is named.
    let model = gguf_file::Value::String("rwkv".into());
    write_gguf(
        &path,
        &[
            ("general.architecture", &arch),
            ("tokenizer.ggml.model", &model),
            ("tokenizer.ggml.tokens", &tokens),
        ],
    );
    let msg = Tokenizer::from_gguf(&read_content(&path), &path)
        .expect_err("unsupported")
        .to_string();
    assert!(msg.contains("rwkv"), "{msg}");
}
