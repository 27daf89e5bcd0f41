//! Scoring throughput on the development corpus (average SMS length, about 82 characters) with the committed
//! model: `cargo bench -p interop-spam-classifier --bench score`. Criterion reports elements per second, which
//! are messages per second on one core.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use interop_spam_classifier::{cli, corpus, COMMITTED_MODEL, DEV_CORPUS};

fn score(c: &mut Criterion) {
    let model = cli::load_model(COMMITTED_MODEL).unwrap_or_else(|e| {
        panic!("{e}: run `cargo run --release -p interop-spam-classifier --example train`")
    });
    let corpus = corpus::load_tsv(DEV_CORPUS).unwrap_or_else(|e| panic!("{e}"));
    let texts: Vec<&str> = corpus.iter().map(|(_, text)| text.as_str()).collect();
    let threshold = model.threshold();

    let mut group = c.benchmark_group("score");
    group.throughput(Throughput::Elements(texts.len() as u64));
    group.bench_function("dev_corpus", |b| {
        b.iter(|| {
            texts
                .iter()
                .filter(|text| model.score(black_box(text)) >= threshold)
                .count()
        })
    });
    group.finish();

    let spam = "URGENT! You have won a 1 week FREE membership in our £100,000 Prize Jackpot! Txt the word: CLAIM to No: 81010 T&C www.dbuk.net";
    c.bench_function("explain/one_message", |b| {
        b.iter(|| model.explain(black_box(spam), 10))
    });
}

criterion_group!(benches, score);
criterion_main!(benches);
