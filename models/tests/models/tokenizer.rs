//! The tokenizer against Hugging Face transformers' outputs (tests/fixtures/tokenizer/make.py):
//! token ids, decodings, special tokens, chat templates; streaming decoding against whole
//! decoding; errors that name the file.

use std::path::{Path, PathBuf};

use kiln_models::tokenizer::{ChatMessage, Tokenizer};
use kiln_models::Error;
use serde_json::Value;

const FOLDERS: [&str; 3] = ["chatml", "llama3", "spm"];

fn fixtures() -> PathBuf {
    crate::repo_root().join("tests/fixtures/tokenizer")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(folder: &str) -> Tokenizer {
    Tokenizer::load(fixtures().join(folder)).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn messages(value: &Value) -> Vec<ChatMessage> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

/// A copy of a fixture folder to modify.
fn copy_of(folder: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join(folder)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, value.to_string()).unwrap();
}

/// Streams `ids` through an incremental decoder; returns the pieces and how many pushes
/// held text back.
fn stream(tokenizer: &Tokenizer, ids: &[u32], skip_special_tokens: bool) -> (String, usize) {
    let mut decoder = tokenizer.incremental_decoder(skip_special_tokens);
    let mut text = String::new();
    let mut held = 0;
    for &id in ids {
        let piece = decoder.push(id).unwrap();
        if piece.is_empty() {
            held += 1;
        }
        text.push_str(&piece);
    }
    text.push_str(&decoder.finish().unwrap());
    (text, held)
}

#[test]
fn ids_and_decodings_match_transformers() {
    let expected = expected();
    for folder in FOLDERS {
        let tokenizer = load(folder);
        let reference = &expected["folders"][folder];
        let strings = reference["strings"].as_array().unwrap();
        assert!(strings.len() >= 20);
        for case in strings {
            let text = case["text"].as_str().unwrap();
            let with_special = ids(&case["ids"]);
            assert_eq!(
                tokenizer.encode(text, true).unwrap(),
                with_special,
                "{folder}: {text:?}"
            );
            assert_eq!(
                tokenizer.encode(text, false).unwrap(),
                ids(&case["ids_no_special"]),
                "{folder}: {text:?} without special tokens"
            );
            assert_eq!(
                tokenizer.decode(&with_special, false).unwrap(),
                case["decoded"].as_str().unwrap(),
                "{folder}: decode {text:?}"
            );
            assert_eq!(
                tokenizer.decode(&with_special, true).unwrap(),
                case["decoded_skip_special"].as_str().unwrap(),
                "{folder}: decode {text:?} skipping special tokens"
            );
        }
    }
}

#[test]
fn special_tokens_match_transformers_and_the_configs() {
    let expected = expected();
    for folder in FOLDERS {
        let tokenizer = load(folder);
        let reference = &expected["folders"][folder];
        assert_eq!(
            tokenizer.vocab_size() as u64,
            reference["vocab_size"].as_u64().unwrap(),
            "{folder}"
        );
        assert_eq!(
            tokenizer.bos_id().map(u64::from),
            reference["bos_id"].as_u64(),
            "{folder}"
        );
        assert_eq!(
            tokenizer.eos_ids().first().map(|&id| u64::from(id)),
            reference["eos_id"].as_u64(),
            "{folder}"
        );
    }
    // The end-of-turn token first, then the generation config's others.
    let chatml = load("chatml");
    let id = |t: &Tokenizer, s: &str| t.token_to_id(s).unwrap();
    assert_eq!(
        chatml.eos_ids(),
        [id(&chatml, "<|im_end|>"), id(&chatml, "<|endoftext|>")]
    );
    assert!(!chatml.add_bos());
    let llama3 = load("llama3");
    assert_eq!(
        llama3.eos_ids(),
        [id(&llama3, "<|eot_id|>"), id(&llama3, "<|end_of_text|>")]
    );
    assert_eq!(llama3.bos_id(), Some(id(&llama3, "<|begin_of_text|>")));
    let spm = load("spm");
    assert_eq!((spm.bos_id(), spm.eos_ids()), (Some(1), &[2u32][..]));
    assert!(spm.add_bos());
}

#[test]
fn chat_templates_match_transformers() {
    let expected = expected();
    let conversations = &expected["conversations"];
    let mut rendered = 0;
    for folder in FOLDERS {
        let tokenizer = load(folder);
        for chat in expected["folders"][folder]["chats"].as_array().unwrap() {
            let name = chat["conversation"].as_str().unwrap();
            let add_generation_prompt = chat["add_generation_prompt"].as_bool().unwrap();
            let result = tokenizer
                .apply_chat_template(&messages(&conversations[name]), add_generation_prompt);
            match chat.get("error") {
                Some(error) => {
                    let err = result.unwrap_err();
                    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
                    let message = err.to_string();
                    assert!(
                        message.contains(error.as_str().unwrap()),
                        "{folder}/{name}: {message}"
                    );
                    assert!(message.contains("tokenizer_config.json"), "{message}");
                }
                None => {
                    let text = result.unwrap();
                    assert_eq!(
                        text,
                        chat["text"].as_str().unwrap(),
                        "{folder}/{name}/{add_generation_prompt}"
                    );
                    assert_eq!(
                        tokenizer.encode(&text, false).unwrap(),
                        ids(&chat["ids"]),
                        "{folder}/{name}"
                    );
                    rendered += 1;
                }
            }
        }
    }
    assert!(rendered >= 14, "{rendered}");
}

/// Templates that use tojson, Python methods, loop controls and namespaces, rendered by
/// transformers' Jinja environment.
#[test]
fn template_features_match_transformers() {
    let expected = expected();
    let dir = copy_of("chatml");
    let templates = expected["folders"]["chatml"]["templates"]
        .as_array()
        .unwrap();
    assert!(templates.len() >= 14);
    for case in templates {
        let template = case["template"].as_str().unwrap();
        let conversation = &expected["conversations"][case["conversation"].as_str().unwrap()];
        std::fs::write(dir.path().join("chat_template.jinja"), template).unwrap();
        let tokenizer = Tokenizer::load(dir.path()).unwrap();
        let text = tokenizer
            .apply_chat_template(&messages(conversation), true)
            .unwrap();
        assert_eq!(
            text,
            case["text"].as_str().unwrap(),
            "template {template:?}"
        );
    }
}

/// Streaming gives the same text as decoding everything at once, and holds text back when a
/// character is split over tokens.
#[test]
fn incremental_decoding_equals_whole_decoding() {
    let expected = expected();
    for folder in FOLDERS {
        let tokenizer = load(folder);
        let mut held_in_emoji = 0;
        for case in expected["folders"][folder]["strings"].as_array().unwrap() {
            let ids = ids(&case["ids"]);
            for skip in [false, true] {
                let (text, held) = stream(&tokenizer, &ids, skip);
                assert_eq!(
                    text,
                    tokenizer.decode(&ids, skip).unwrap(),
                    "{folder}: {:?}",
                    case["text"]
                );
                assert!(!text.contains('\u{FFFD}'), "{folder}: {text:?}");
                if case["text"].as_str().unwrap().contains('🦀') {
                    held_in_emoji += held;
                }
            }
        }
        assert!(
            held_in_emoji > 0,
            "{folder}: no character was split over tokens"
        );
    }
}

/// Random token sequences, incomplete characters included: streaming still equals decoding.
/// Byte-fallback tokens are left out for `spm`: a stray byte there rewrites a whole run of
/// bytes as U+FFFD when decoding at once (see `IncrementalDecoder`), which streaming cannot.
#[test]
fn incremental_decoding_of_random_tokens() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for folder in FOLDERS {
        let tokenizer = load(folder);
        let vocab = tokenizer.vocab_size() as u64;
        for _ in 0..200 {
            let len = 1 + next() % 12;
            let ids: Vec<u32> = (0..len)
                .map(|_| (next() % vocab) as u32)
                .filter(|&id| folder != "spm" || !(3..259).contains(&id))
                .collect();
            for skip in [false, true] {
                let (text, _) = stream(&tokenizer, &ids, skip);
                assert_eq!(
                    text,
                    tokenizer.decode(&ids, skip).unwrap(),
                    "{folder}: {ids:?}"
                );
            }
        }
        // A lone first byte of a four-byte character: held, then written as U+FFFD by finish.
        let crab = tokenizer.encode("🦀", false).unwrap();
        let mut decoder = tokenizer.incremental_decoder(false);
        let mut text = String::new();
        for &id in &crab[..crab.len() - 1] {
            text.push_str(&decoder.push(id).unwrap());
        }
        assert!(
            text.is_empty() || !text.ends_with('🦀'),
            "{folder}: {text:?}"
        );
        let rest = decoder.finish().unwrap();
        assert!(rest.contains('\u{FFFD}'), "{folder}: {rest:?}");
    }
}

/// A tokenizer (and a checkpoint) can be shared between threads, e.g. a server's workers.
#[test]
fn tokenizer_and_checkpoint_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Tokenizer>();
    send_sync::<kiln_models::SafeTensors>();
}

#[test]
fn bad_ids_are_errors() {
    let tokenizer = load("chatml");
    let past = tokenizer.vocab_size() as u32;
    let err = tokenizer.decode(&[1, past], false).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains(&past.to_string()), "{err}");
    let mut decoder = tokenizer.incremental_decoder(true);
    assert!(decoder.push(past).is_err());
    // The bad id did not join the stream.
    assert_eq!(
        decoder.push(past - 1).unwrap(),
        tokenizer.decode(&[past - 1], true).unwrap()
    );
}

#[test]
fn named_templates_and_the_jinja_file() {
    // The list form without `default` lists what it has.
    let dir = copy_of("spm");
    let config = dir.path().join("tokenizer_config.json");
    edit_json(&config, |c| {
        c["chat_template"] = serde_json::json!([{"name": "rag", "template": "x"}, {"name": "tool_use", "template": "y"}]);
    });
    let message = Tokenizer::load(dir.path()).unwrap_err().to_string();
    for needle in [
        "tokenizer_config.json",
        "chat_template",
        "default",
        "rag",
        "tool_use",
    ] {
        assert!(message.contains(needle), "{message}");
    }

    // chat_template.jinja takes precedence over tokenizer_config.json.
    edit_json(&config, |c| c["chat_template"] = "from the config".into());
    assert_eq!(
        Tokenizer::load(dir.path())
            .unwrap()
            .apply_chat_template(&[], false)
            .unwrap(),
        "from the config"
    );
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{{ bos_token }}from the file{{ eos_token }}",
    )
    .unwrap();
    assert_eq!(
        Tokenizer::load(dir.path())
            .unwrap()
            .apply_chat_template(&[], false)
            .unwrap(),
        "<s>from the file</s>"
    );

    // A syntax error names the file at load.
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{% for m in messages %}",
    )
    .unwrap();
    let err = Tokenizer::load(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    assert!(err.to_string().contains("chat_template.jinja"), "{err}");

    // No template at all.
    std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
    edit_json(&config, |c| {
        c.as_object_mut().unwrap().remove("chat_template");
    });
    let tokenizer = Tokenizer::load(dir.path()).unwrap();
    assert!(tokenizer.chat_template().is_none());
    let message = tokenizer
        .apply_chat_template(&[ChatMessage::new("user", "hi")], true)
        .unwrap_err()
        .to_string();
    assert!(message.contains("no chat template"), "{message}");
}

#[test]
fn malformed_files_are_errors_naming_them() {
    let dir = copy_of("llama3");
    let path = |name: &str| dir.path().join(name);

    let tokenizer_json = std::fs::read_to_string(path("tokenizer.json")).unwrap();
    for bad in ["", "{", "[]", "{\"model\": {\"type\": \"Nope\"}}"] {
        std::fs::write(path("tokenizer.json"), bad).unwrap();
        let err = Tokenizer::load(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{bad:?}: {err:?}");
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
    }
    std::fs::write(
        path("tokenizer.json"),
        &tokenizer_json[..tokenizer_json.len() / 2],
    )
    .unwrap();
    assert!(Tokenizer::load(dir.path())
        .unwrap_err()
        .to_string()
        .contains("tokenizer.json"));
    std::fs::remove_file(path("tokenizer.json")).unwrap();
    let err = Tokenizer::load(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    std::fs::write(path("tokenizer.json"), &tokenizer_json).unwrap();

    for name in [
        "tokenizer_config.json",
        "generation_config.json",
        "config.json",
    ] {
        let good = std::fs::read_to_string(path(name)).unwrap();
        for bad in ["{", "[1]"] {
            std::fs::write(path(name), bad).unwrap();
            let err = Tokenizer::load(dir.path()).unwrap_err();
            assert!(
                matches!(err, Error::Format { .. }),
                "{name} {bad:?}: {err:?}"
            );
            assert!(err.to_string().contains(name), "{err}");
        }
        std::fs::write(path(name), good).unwrap();
    }

    let bad_values: [(&str, &str, Value); 5] = [
        (
            "tokenizer_config.json",
            "bos_token",
            "<|not a token|>".into(),
        ),
        (
            "tokenizer_config.json",
            "eos_token",
            serde_json::json!({"lstrip": false}),
        ),
        ("tokenizer_config.json", "add_bos_token", "yes".into()),
        (
            "generation_config.json",
            "eos_token_id",
            serde_json::json!([1, "two"]),
        ),
        ("config.json", "eos_token_id", serde_json::json!(-1)),
    ];
    for (name, key, value) in bad_values {
        let good = std::fs::read_to_string(path(name)).unwrap();
        edit_json(&path(name), |c| c[key] = value.clone());
        let message = Tokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains(name) && message.contains(key),
            "{name} {key}: {message}"
        );
        std::fs::write(path(name), good).unwrap();
    }

    // The optional files may be absent.
    for name in [
        "tokenizer_config.json",
        "generation_config.json",
        "config.json",
    ] {
        std::fs::remove_file(path(name)).unwrap();
    }
    let tokenizer = Tokenizer::load(dir.path()).unwrap();
    assert!(tokenizer.eos_ids().is_empty() && tokenizer.bos_id().is_none());
    assert!(tokenizer.chat_template().is_none());
    assert_eq!(
        tokenizer.encode("Hello", true).unwrap()[0],
        0,
        "the post-processor still adds BOS"
    );
}
