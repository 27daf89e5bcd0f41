//! The model file format: round trips, typed errors for damaged files, and scoring of unusual text.

use interop_spam_classifier::codec::{FORMAT_VERSION, MAGIC};
use interop_spam_classifier::{corpus, Model, ModelError, TrainParams, DEV_CORPUS};

/// A model trained on a slice of the development corpus, cheap enough for a debug build.
fn small_model(params: &TrainParams) -> Model {
    let corpus = corpus::load_tsv(DEV_CORPUS).unwrap_or_else(|e| {
        panic!("the development corpus is missing ({e}); it is committed as `shared/spam-classifier/data/sms-spam/dev.tsv`")
    });
    Model::train(&corpus[..600], params)
}

/// A model with 2^10 buckets: small enough to try every truncation.
fn tiny_model() -> Model {
    small_model(&TrainParams {
        hash_bits: 10,
        epochs: 2,
        ..TrainParams::default()
    })
}

#[test]
fn round_trip_keeps_the_model_and_its_bytes() {
    let model = small_model(&TrainParams::default());
    let bytes = model.to_bytes();
    assert_eq!(bytes[..8], MAGIC);
    let loaded = Model::from_bytes(&bytes).unwrap();
    assert_eq!(loaded, model);
    assert_eq!(loaded.to_bytes(), bytes);
    assert_eq!(loaded.params(), model.params());
    for text in ["Call 09061701461 to claim your prize", "see you at 5", ""] {
        assert_eq!(loaded.score(text), model.score(text));
    }
}

#[test]
fn training_is_deterministic() {
    let a = small_model(&TrainParams::default()).to_bytes();
    let b = small_model(&TrainParams::default()).to_bytes();
    assert!(a == b, "two trainings on the same data differ");
    let other_seed = small_model(&TrainParams {
        seed: 1,
        ..TrainParams::default()
    });
    assert_ne!(other_seed.to_bytes(), a);
}

#[test]
fn every_truncation_is_a_typed_error() {
    let bytes = tiny_model().to_bytes();
    for len in 0..bytes.len() {
        match Model::from_bytes(&bytes[..len]) {
            Err(ModelError::Truncated { actual, expected }) => {
                assert_eq!(actual, len);
                assert!(expected > len);
            }
            other => panic!(
                "{len} of {} bytes: expected Truncated, got {other:?}",
                bytes.len()
            ),
        }
    }
}

#[test]
fn damaged_files_are_typed_errors() {
    let bytes = tiny_model().to_bytes();

    let mut wrong_magic = bytes.clone();
    wrong_magic[0] = b'X';
    assert_eq!(Model::from_bytes(&wrong_magic), Err(ModelError::BadMagic));
    assert_eq!(
        Model::from_bytes(b"PK\x03\x04 a zip file, not a model"),
        Err(ModelError::BadMagic)
    );

    let mut future = bytes.clone();
    future[8..10].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert_eq!(
        Model::from_bytes(&future),
        Err(ModelError::UnsupportedVersion {
            found: FORMAT_VERSION + 1,
            supported: FORMAT_VERSION
        })
    );

    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b"junk");
    assert_eq!(
        Model::from_bytes(&trailing),
        Err(ModelError::TrailingBytes { extra: 4 })
    );

    // Any single flipped bit after the version is caught (by the length check or the checksum).
    for pos in (10..bytes.len()).step_by(7) {
        let mut corrupt = bytes.clone();
        corrupt[pos] ^= 0x10;
        let err = Model::from_bytes(&corrupt).expect_err("corrupt file loaded");
        assert!(
            matches!(
                err,
                ModelError::Checksum { .. }
                    | ModelError::Truncated { .. }
                    | ModelError::TrailingBytes { .. }
            ),
            "byte {pos}: {err:?}"
        );
    }
    // Errors say what is wrong.
    assert!(ModelError::BadMagic.to_string().contains("magic"));
}

#[test]
fn scores_unusual_text_without_panicking() {
    let model = small_model(&TrainParams::default());
    let long_spam = "WIN a FREE prize! Call 09061701461 now. ".repeat(1 << 20 >> 5);
    let long_mixed: String =
        "日本語のテキスト 😀🎉 Ünïcödé ß ǅ İ ﬃ \u{200b}\u{0}\t\r\n".repeat(20_000);
    for text in [
        "",
        " ",
        "\n\n\t",
        "😀",
        "🎉🎉🎉 Wïn ä frée 🎁 prize!!! ☎️ 09061701461",
        "Привет, как дела? Позвони мне",
        "مرحبا كيف حالك",
        "İstanbul ǅemal ﬃ", // Characters whose lower case is longer or several characters.
        "a'b'c' 'd ’e’",
        "£$€¥₹₤ 100",
        long_spam.as_str(),
        long_mixed.as_str(),
    ] {
        let score = model.score(text);
        assert!(
            (0.0..=1.0).contains(&score),
            "{score} for {:?}",
            &text[..text.len().min(40)]
        );
        let explained = model.explain(&text[..text.len().min(10_000)], 5);
        assert!(explained.len() <= 5);
    }
    assert!(long_spam.len() >= 1 << 20);
    assert!(model.score(&long_spam) > model.score(&long_mixed));
}
