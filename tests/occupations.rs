//! Occupation prompts, templates, the BLS table and the profession split, checked against the
//! vendored data and the reference outputs.

use biaslens::data::occupations::{
    occupation_prompts, vig_templates, BlsTable, Profession, Template, VIG_TEMPLATES,
};
use biaslens::data::pronouns::{PronounForms, SUBJECT};
use biaslens::data::split::{split_professions, Part, SplitSpec};
use biaslens::Error;
use std::io::BufRead;
use std::path::{Path, PathBuf};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

fn professions() -> Vec<Profession> {
    Profession::load(&fixture("data/bolukbasi_debiaswe/professions.json")).unwrap()
}

#[test]
fn loads_all_320_professions() {
    let p = professions();
    assert_eq!(p.len(), 320);
    let adj = p.iter().find(|p| p.raw == "adjunct_professor").unwrap();
    assert_eq!(adj.name, "adjunct professor");
    assert_eq!((adj.definitional, adj.stereotypical), (0.0, 0.5));
    let actress = p.iter().find(|p| p.raw == "actress").unwrap();
    assert_eq!(actress.definitional, -1.0);
}

#[test]
fn profession_errors_name_file_and_entry() {
    let path = Path::new("profs.json");
    let e = Profession::parse(r#"[["a", 0.1, 0.2], ["b", "x", 0.1]]"#, path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("profs.json") && e.contains("entry 1") && e.contains("definitional"),
        "{e}"
    );
    let e = Profession::parse(r#"[["a", 0.1]]"#, path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("entry 0"), "{e}");
    let e = Profession::parse("[]", path).unwrap_err().to_string();
    assert!(e.contains("no professions"), "{e}");
    assert!(Profession::parse("{}", path).is_err());
    assert!(Profession::parse(r#"[["a", 0, 0], ["a", 1, 1]]"#, path).is_err());
    assert!(Profession::load(Path::new("/nonexistent/p.json")).is_err());
}

#[test]
fn templates_match_reference_meta() {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/smollm2-135m/meta.json")).unwrap(),
    )
    .unwrap();
    let reference: Vec<&str> = meta["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(reference, VIG_TEMPLATES.to_vec());
    let provenance =
        std::fs::read_to_string(fixture("data/vig_causal_mediation/PROVENANCE.md")).unwrap();
    for t in VIG_TEMPLATES {
        assert!(
            provenance.contains(&format!("`{t}`")),
            "{t} not in PROVENANCE.md"
        );
        assert_eq!(Template::new(t).unwrap().as_str(), t);
    }
}

#[test]
fn template_validation() {
    assert_eq!(
        Template::new("The {} ran").unwrap().fill("nurse"),
        "The nurse ran"
    );
    for bad in ["no slot", "The {} and {}", ""] {
        match Template::new(bad) {
            Err(Error::Param { message, .. }) => {
                assert!(message.contains(&format!("{bad:?}")), "{message}")
            }
            other => panic!("{bad:?} accepted: {other:?}"),
        }
    }
    let t: Result<Template, _> = serde_json::from_str("\"two {} {}\"");
    assert!(t.is_err());
}

#[test]
fn template_file_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.txt");
    std::fs::write(&path, "The {} said that\n\nThe {} ran because\n").unwrap();
    let ts = Template::load(&path).unwrap();
    assert_eq!(ts.len(), 2);
    assert_eq!(ts[1].as_str(), "The {} ran because");
    std::fs::write(&path, "The {} said that\nbroken\n").unwrap();
    let e = Template::load(&path).unwrap_err().to_string();
    assert!(e.contains("t.txt:2:"), "{e}");
    std::fs::write(&path, "\n\n").unwrap();
    assert!(Template::load(&path).is_err());
}

#[test]
fn prompts_equal_reference_texts_in_order() {
    let prompts = occupation_prompts(&professions(), &vig_templates());
    assert_eq!(prompts.len(), 320 * 17);
    let f = std::fs::File::open(fixture("reference/smollm2-135m/occupation_probs.jsonl")).unwrap();
    let mut count = 0;
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let row: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let p = &prompts[i];
        assert_eq!(p.text, row["text"].as_str().unwrap(), "row {i}");
        assert_eq!(p.profession, row["profession"].as_str().unwrap(), "row {i}");
        assert_eq!(p.template, row["template"].as_str().unwrap(), "row {i}");
        assert_eq!(p.template_index, i % 17);
        assert_eq!(p.stereotypical, row["stereotypical"].as_f64().unwrap());
        assert_eq!(p.definitional, row["definitional"].as_f64().unwrap());
        count += 1;
    }
    assert_eq!(count, prompts.len());
}

#[test]
fn bls_table_lookup() {
    let t = BlsTable::load(&fixture("data/winogender/occupations-stats.tsv")).unwrap();
    assert_eq!(t.rows.len(), 60);
    assert_eq!(t.bls_pct_female("accountant"), Some(59.7));
    assert_eq!(t.bls_pct_female("engineer"), Some(10.72));
    assert_eq!(t.bls_pct_female("astronaut"), None);
    assert_eq!(t.rows.iter().filter(|r| r.bls_year == 2016).count(), 9);
    let e = BlsTable::parse(
        "occupation\tbergsma_pct_female\tbls_pct_female\tbls_year\nnurse\t1\tx\t2015\n",
        Path::new("s.tsv"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("s.tsv:2:") && e.contains("bls_pct_female"),
        "{e}"
    );
    assert!(BlsTable::parse("wrong\theader\n", Path::new("s.tsv")).is_err());
}

#[test]
fn pronoun_forms() {
    assert_eq!(
        SUBJECT.rendered(PronounForms::LeadingSpace),
        [" he", " she", " they"]
    );
    assert_eq!(SUBJECT.rendered(PronounForms::Bare), ["he", "she", "they"]);
}

#[test]
fn split_is_deterministic_disjoint_covering() {
    let p = professions();
    let spec = SplitSpec::default();
    let a = split_professions(&p, &spec).unwrap();
    assert_eq!(a, split_professions(&p, &spec).unwrap());
    let mut all: Vec<&String> = a
        .edit
        .iter()
        .chain(&a.held_out)
        .chain(&a.controls)
        .collect();
    assert_eq!(all.len(), p.len());
    all.sort();
    all.dedup();
    assert_eq!(all.len(), p.len(), "parts overlap");
    for q in &p {
        let part = a.part_of(&q.raw).unwrap();
        assert_eq!(
            part == Part::DefinitionalControl,
            q.definitional.abs() >= 0.5,
            "{}",
            q.raw
        );
    }
    assert_eq!(a.part_of("actress"), Some(Part::DefinitionalControl));
    assert_eq!(a.part_of("businessman"), Some(Part::DefinitionalControl));
    assert_eq!(a.controls.len(), 32);
    let rest = (a.edit.len() + a.held_out.len()) as f64;
    assert!((a.held_out.len() as f64 / rest - 0.5).abs() < 0.01);
    let other = split_professions(
        &p,
        &SplitSpec {
            seed: 7,
            ..spec.clone()
        },
    )
    .unwrap();
    assert_ne!(a.held_out, other.held_out, "seed has no effect");
    assert_eq!(a.controls, other.controls);
}

#[test]
fn split_is_order_invariant_and_respects_fraction() {
    let p = professions();
    let mut rev = p.clone();
    rev.reverse();
    rev.rotate_left(17);
    for frac in [0.0, 0.2, 0.5, 0.9, 1.0] {
        let spec = SplitSpec {
            held_out_fraction: frac,
            ..SplitSpec::default()
        };
        let a = split_professions(&p, &spec).unwrap();
        assert_eq!(a, split_professions(&rev, &spec).unwrap());
        let rest = a.edit.len() + a.held_out.len();
        assert_eq!(a.held_out.len(), (frac * rest as f64).round() as usize);
    }
    assert!(split_professions(
        &p,
        &SplitSpec {
            held_out_fraction: 1.5,
            ..SplitSpec::default()
        }
    )
    .is_err());
    assert!(split_professions(
        &p,
        &SplitSpec {
            definitional_threshold: f64::NAN,
            ..SplitSpec::default()
        }
    )
    .is_err());
    let dup = vec![p[0].clone(), p[0].clone()];
    assert!(split_professions(&dup, &SplitSpec::default()).is_err());
}

/// The protected word sets (the probe's and gap tuning's `protect_set`) never contain a
/// profession, so the 32 definitional controls stay unseen by every edit; each set grows the
/// previous one by its file.
#[test]
fn protected_sets_exclude_every_profession() {
    use biaslens::edit::probe::{protect_set_words, ProtectSet};
    let profs = professions();
    let raw: Vec<String> = profs.iter().map(|p| p.raw.clone()).collect();
    let data = fixture("data");
    let mut sizes = Vec::new();
    for set in [
        ProtectSet::Pairs,
        ProtectSet::Persons,
        ProtectSet::Roles,
        ProtectSet::Extended,
    ] {
        let words = protect_set_words(set, &data, &raw).unwrap();
        for w in &words {
            assert!(
                !profs.iter().any(|p| &p.raw == w || &p.name == w),
                "{set:?}: `{w}` is a profession"
            );
        }
        let mut sorted = words.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, words, "{set:?}: sorted and unique");
        sizes.push(words.len());
    }
    assert_eq!(sizes[0], 37, "the equalize-pair words");
    assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
    let files = [
        "gendered_persons.json",
        "gendered_roles.json",
        "gendered_extended.json",
    ];
    for f in files {
        let list: Vec<String> =
            serde_json::from_str(&std::fs::read_to_string(data.join("protected").join(f)).unwrap())
                .unwrap();
        for w in &list {
            assert!(
                !profs.iter().any(|p| &p.raw == w || &p.name == w),
                "{f}: `{w}` is a profession"
            );
        }
    }
}

/// `protected/sets.json` lists each protect set's words as the library builds them, for the
/// harness scripts (harness/protected_words.py reads it instead of repeating the rules). Run
/// with `BIASLENS_UPDATE_FIXTURES=1` to rewrite it after changing a list or a rule.
#[test]
fn protected_sets_file_lists_the_library_sets() {
    use biaslens::edit::probe::{protect_set_words, ProtectSet};
    let raw: Vec<String> = professions().iter().map(|p| p.raw.clone()).collect();
    let data = fixture("data");
    let mut want = serde_json::Map::new();
    for set in [
        ProtectSet::Pairs,
        ProtectSet::Persons,
        ProtectSet::Roles,
        ProtectSet::Extended,
    ] {
        let name = serde_json::to_value(set).unwrap();
        let words = protect_set_words(set, &data, &raw).unwrap();
        want.insert(name.as_str().unwrap().to_string(), words.into());
    }
    let want = serde_json::Value::Object(want);
    let path = data.join("protected/sets.json");
    if std::env::var("BIASLENS_UPDATE_FIXTURES").as_deref() == Ok("1") {
        let text = serde_json::to_string_pretty(&want).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
    }
    let have: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        have == want,
        "{} is out of date: rerun this test with BIASLENS_UPDATE_FIXTURES=1",
        path.display()
    );
}

/// The words in `NAME = [ ... ]` of harness/wild-check.py: the unseen words of findings §6k,
/// which no fit list may contain.
fn wild_check_words() -> Vec<String> {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/wild-check.py"),
    )
    .unwrap();
    let mut words = Vec::new();
    for name in ["OCCUPATIONS", "MALE", "FEMALE"] {
        let start = src.find(&format!("\n{name} = [")).unwrap();
        let block = &src[start..];
        let block = &block[..block.find(']').unwrap()];
        words.extend(block.split('"').skip(1).step_by(2).map(str::to_lowercase));
    }
    assert!(words.len() > 100, "parsed {} wild-check words", words.len());
    words
}

/// WordNet's extra words (`--word-source wordnet`) never include a project profession (the
/// held-out ones and the controls among them), a protected word or a wild-check word, and
/// occupations and gendered nouns do not overlap.
#[test]
fn wordnet_words_are_disjoint_from_every_project_list() {
    use biaslens::edit::probe::{extra_words, protect_set_words, ProtectSet, WordSource};
    let raw: Vec<String> = professions().iter().map(|p| p.raw.clone()).collect();
    let data = fixture("data");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("wordnet/words.json")).unwrap())
            .unwrap();
    let list = |k: &str| -> Vec<String> { serde_json::from_value(file[k].clone()).unwrap() };
    let (occ, male, female) = (list("occupations"), list("male"), list("female"));
    let mut taken = raw.clone();
    taken.extend(protect_set_words(ProtectSet::Extended, &data, &raw).unwrap());
    taken.extend(wild_check_words());
    for w in occ.iter().chain(&male).chain(&female) {
        assert!(
            !taken.contains(w),
            "wordnet/words.json: `{w}` is in a project list"
        );
        assert!(
            w.len() > 2 && w.chars().all(|c| c.is_ascii_lowercase()),
            "`{w}` is not a plain word"
        );
    }
    for w in &occ {
        assert!(!male.contains(w) && !female.contains(w), "`{w}` is both");
    }
    // The library's view: the same words, nothing dropped, nothing added.
    let extra = extra_words(WordSource::Wordnet, &data, &taken).unwrap();
    assert_eq!(extra.occupations, occ);
    assert_eq!(extra.gendered, [male, female].concat());
    assert_eq!(
        extra_words(WordSource::Project, &data, &taken).unwrap(),
        Default::default()
    );
    // Excluded words are filtered at run time too, whatever the file holds.
    let first = occ[0].clone();
    let fewer = extra_words(WordSource::Wordnet, &data, std::slice::from_ref(&first)).unwrap();
    assert!(!fewer.occupations.contains(&first));
    assert_eq!(fewer.occupations.len(), occ.len() - 1);
}

/// The project-written fit templates (`--fit-templates varied`) are none of the templates any
/// measurement reads: Vig et al.'s 17 (held-out numbers use their unseen split) and the
/// wild-check's 10. Compared with the slot and case normalised, so "the {}" vs "a {}" or a
/// capital letter cannot hide a copy.
#[test]
fn varied_fit_templates_are_disjoint_from_measured_templates() {
    use biaslens::data::{Template, VIG_TEMPLATES};
    let norm = |t: &str| {
        t.to_lowercase()
            .replace("a {}", "{}")
            .replace("an {}", "{}")
            .replace("the {}", "{}")
    };
    let varied = Template::load(&fixture("data/templates/varied.txt")).unwrap();
    assert_eq!(varied.len(), 24);
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/wild-check.py"),
    )
    .unwrap();
    let start = src.find("\nTEMPLATES = [").unwrap();
    let block = &src[start..];
    let block = &block[..block.find(']').unwrap()];
    let wild: Vec<&str> = block.split('"').skip(1).step_by(2).collect();
    assert_eq!(wild.len(), 10, "parsed the wild-check's templates");
    let measured: Vec<String> = VIG_TEMPLATES
        .iter()
        .copied()
        .chain(wild)
        .map(norm)
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for t in &varied {
        let n = norm(t.as_str());
        assert!(
            !measured.contains(&n),
            "{:?} is a measured template",
            t.as_str()
        );
        assert!(seen.insert(n), "{:?} twice", t.as_str());
    }
}
