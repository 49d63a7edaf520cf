//! The workflow's prompts (`prompts/list`, `prompts/get`): OpenSpec's three steps, propose a
//! change, apply it, archive it, as messages a user picks to start the work (Claude Code and
//! VS Code offer them as slash commands). They name the tools as `tools/list` does, and a
//! client completes their `slug` from the workspace (`completion/complete`).
use serde_json::{Value, json};

use super::jsonrpc::RpcError;
use crate::{ToolNames, upstream::Registry};

struct Prompt {
    name: &'static str,
    title: &'static str,
    description: &'static str,
    /// Each prompt takes one argument, required; `{argument}` in `text` stands for its value.
    argument: &'static str,
    argument_description: &'static str,
    text: &'static str,
}

/// The prompt argument that names a change, completed from the workspace's slugs.
pub const SLUG: &str = "slug";

const PROMPTS: [Prompt; 3] = [
    Prompt {
        name: "propose",
        title: "Propose a change",
        description: "Open a spec-driven change for a request: proposal, spec deltas and checklist, validated, \
                      ready for review before any code is written.",
        argument: "request",
        argument_description: "What should change, in a sentence or a paragraph.",
        text: "Propose a spec-driven change for this request:

{argument}

1. Check with `change.list` that no open change covers it already.
2. Choose a slug (3 to 64 characters of a-z, 0-9 and inner hyphens, e.g. `add-login-throttle`) and a \
one-line title, and call `change.open` with them and a rationale: why the change is needed, in a few \
sentences. It scaffolds `openspec/changes/<slug>/` (proposal.md, tasks.md, specs/) and takes the \
change's lock for you.
3. In proposal.md, fill in What Changes and Impact for this request.
4. For each capability whose behaviour changes, write `specs/<capability>/spec.md` as the change's \
`specs/README.md` describes: requirements that say SHALL or MUST, each with a scenario.
5. Replace the template's checklist in tasks.md with the concrete steps this request needs, keeping \
the `- [ ] 1.1 ...` numbering.
6. Call `change.validate` and fix every error and warning it reports.

Stop there: show the proposal for review before implementing anything.",
    },
    Prompt {
        name: "apply",
        title: "Apply a change",
        description: "Implement an open change task by task, ticking its checklist as the work is done.",
        argument: SLUG,
        argument_description: "The change's slug.",
        text: "Implement the change `{argument}`.

1. Call `change.show` with slug `{argument}` and read its proposal, spec deltas and checklist. If \
another owner holds its lock, stop and say so.
2. Work through the unticked tasks in order. When one is done, tick it with `task.update` (its id, \
`done: true`), so that the checklist shows the real progress.
3. Keep to the proposal and the spec deltas. If the work shows them wrong, correct them first and \
say so.
4. When every task is ticked, call `change.validate` and fix what it reports. Do not archive yet: \
that is the `archive` prompt's step.",
    },
    Prompt {
        name: "archive",
        title: "Archive a change",
        description: "Check that a change is complete, run the tests, and archive it with a receipt of the commits \
                      and the test results.",
        argument: SLUG,
        argument_description: "The change's slug.",
        text: "Archive the change `{argument}` now that its work is done.

1. Call `change.show` with slug `{argument}` and check that every task is ticked. If some are not, \
list them and stop.
2. Run the project's test suite; note the command and how many tests passed, failed and were skipped.
3. Call `change.validate` and fix every error it reports.
4. Call `change.archive` with slug `{argument}` and `tests` set to those counts, with the command as \
its `note`. Report the archive folder and the commits its receipt lists.",
    },
];

/// `prompts/list`'s entries.
pub fn list() -> Vec<Value> {
    PROMPTS
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "title": p.title,
                "description": p.description,
                "arguments": [{"name": p.argument, "description": p.argument_description, "required": true}],
            })
        })
        .collect()
}

/// Whether `prompt` is one of these prompts and takes a slug as `argument`.
pub fn completes_slug(prompt: &str, argument: &str) -> bool {
    argument == SLUG && PROMPTS.iter().any(|p| p.name == prompt && p.argument == SLUG)
}

/// `prompts/get` of `name` with `params`, or `None` when no prompt here has that name. The
/// text names each tool of `registry` as `tools/list` shows it under `names`.
pub fn get(name: &str, params: &Value, registry: &Registry, names: ToolNames) -> Option<Result<Value, RpcError>> {
    let prompt = PROMPTS.iter().find(|p| p.name == name)?;
    let value = match params.pointer(&format!("/arguments/{}", prompt.argument)) {
        Some(Value::String(v)) if !v.trim().is_empty() => v.trim(),
        Some(Value::String(_)) | None => {
            return Some(Err(RpcError::invalid_params(format!("missing required argument {:?}", prompt.argument))));
        }
        Some(_) => {
            return Some(Err(RpcError::invalid_params(format!("argument {:?} must be a string", prompt.argument))));
        }
    };
    let text = registry.name_tools(prompt.text, names).replace("{argument}", value);
    Some(Ok(json!({
        "description": prompt.description,
        "messages": [{"role": "user", "content": {"type": "text", "text": text}}],
    })))
}

#[cfg(test)]
mod tests {
    use prost_reflect::DescriptorPool;

    use super::*;

    fn registry() -> Registry {
        let pool = DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("embedded descriptors");
        Registry::from_pool(&pool).expect("registry")
    }

    /// Every backticked word that looks like a tool name (`x.y` or `x_y`, in a tool's form).
    fn named_tools(text: &str, registry: &Registry) -> Vec<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .filter(|word| registry.tools().iter().any(|t| *word == t.name || *word == t.underscored_name))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn each_prompt_names_only_tools_that_exist_as_tools_list_shows_them() {
        let registry = registry();
        for names in [ToolNames::Dotted, ToolNames::Underscored] {
            for prompt in PROMPTS {
                let args = json!({"arguments": {prompt.argument: "add-x"}});
                let got = get(prompt.name, &args, &registry, names).expect("a prompt").expect("its messages");
                let text = got["messages"][0]["content"]["text"].as_str().expect("a text message");
                let named = named_tools(text, &registry);
                assert!(!named.is_empty(), "{}: names no tool", prompt.name);
                let listed: Vec<&str> = registry.tools().iter().map(|t| t.listed_name(names)).collect();
                for tool in &named {
                    assert!(listed.contains(&tool.as_str()), "{} ({names:?}) names {tool}, not listed", prompt.name);
                }
                assert!(!text.contains("{argument}"), "{}: argument left unfilled", prompt.name);
                assert!(text.contains("add-x"), "{}: the argument is missing", prompt.name);
            }
        }
    }

    #[test]
    fn a_missing_or_blank_argument_is_invalid_params() {
        let registry = registry();
        for args in [
            json!({}),
            json!({"arguments": {}}),
            json!({"arguments": {"slug": "  "}}),
            json!({"arguments": {"slug": 3}}),
        ] {
            let err = get("apply", &args, &registry, ToolNames::Dotted).expect("a prompt").expect_err("refused");
            assert_eq!(err.code, super::super::jsonrpc::INVALID_PARAMS, "{args}");
        }
        assert!(get("nope", &json!({}), &registry, ToolNames::Dotted).is_none());
    }

    #[test]
    fn only_slug_arguments_complete_from_the_workspace() {
        assert!(completes_slug("apply", "slug"));
        assert!(completes_slug("archive", "slug"));
        assert!(!completes_slug("propose", "request"));
        assert!(!completes_slug("propose", "slug"));
        assert!(!completes_slug("nope", "slug"));
    }
}
