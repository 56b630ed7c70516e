/*
 * test_chat_template.c - the chat-template interpreter's smaller semantics:
 * output conversion, whitespace control, undefined handling, loops and
 * scoping, filters, errors with line numbers, render limits, built-in
 * templates and concurrent renders of one compiled template. (Byte
 * exactness against jinja2 is tests/template/test_template_exact.py.)
 */
#include <pthread.h>
#include <stdlib.h>

#include "chat_template.h"
#include "testing.h"

/* Renders src with the JSON context; returns a malloc'd string, or NULL
 * with the error in err. */
static char *render(const char *src, const char *context_json, struct es_err *err)
{
    struct chat_template *ct = NULL;
    es_err_clear(err);
    if (ct_compile(src, &ct, err) != ES_OK) return NULL;
    cJSON *ctx = cJSON_Parse(context_json ? context_json : "{}");
    struct strbuf out = {0};
    enum es_status st = ct_render(ct, ctx, &out, err);
    cJSON_Delete(ctx);
    ct_free(ct);
    if (st != ES_OK) {
        sb_free(&out);
        return NULL;
    }
    return sb_steal(&out);
}

static void expect(const char *src, const char *ctx, const char *want)
{
    struct es_err err = {{0}};
    char *got = render(src, ctx, &err);
    if (!got) fprintf(stderr, "render failed for %s: %s\n", src, err.msg);
    CHECK_STR(got, want);
    free(got);
}

static void expect_error(const char *src, const char *ctx, const char *needle)
{
    struct es_err err = {{0}};
    char *got = render(src, ctx, &err);
    CHECK(got == NULL);
    if (!strstr(err.msg, needle)) fprintf(stderr, "error '%s' lacks '%s'\n", err.msg, needle);
    CHECK(strstr(err.msg, needle) != NULL);
    free(got);
}

struct thread_arg {
    const struct chat_template *ct;
    cJSON *ctx;
    int ok;
};

static void *render_many(void *p)
{
    struct thread_arg *a = p;
    for (int i = 0; i < 200; i++) {
        struct strbuf out = {0};
        struct es_err err = {{0}};
        if (ct_render(a->ct, a->ctx, &out, &err) == ES_OK && strcmp(sb_cstr(&out), "0:a|1:b|") == 0)
            a->ok++;
        sb_free(&out);
    }
    return NULL;
}

int main(void)
{
    /* values print as Python prints them */
    expect("{{ 1 }} {{ 2.5 }} {{ 1.0 }} {{ none }} {{ true }} {{ [1, 'a'] }} {{ {'k': none} }}",
           NULL, "1 2.5 1.0 None True [1, 'a'] {'k': None}");
    expect("{{ 1e20 }} {{ 0.1 + 0.2 }} {{ 1 / 4 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }}", NULL,
           "1e+20 0.30000000000000004 0.25 3 -4 2");

    /* whitespace control, trim_blocks and lstrip_blocks */
    expect("a\n  {% if true %}\n  b\n  {% endif %}\nc", NULL, "a\n  b\nc");
    expect("x  {%- if true -%}  y  {%- endif %}", NULL, "xy");
    expect("{{ 'a' }}\n{# note #}\nb\n", NULL, "a\nb");
    expect("  {%+ if true %}k{% endif %}", NULL, "  k");

    /* undefined: empty, falsy, fails on use */
    expect(
        "[{{ missing }}]{{ missing is defined }}{{ missing | default('d') }}{{ missing | length }}",
        NULL, "[]Falsed0");
    expect_error("{{ missing.attr }}", NULL, "'missing' is undefined");
    expect_error("{{ missing + 1 }}", NULL, "is undefined");
    expect("{{ d.nokey }}|{{ l[5] }}|{{ none.x }}", "{\"d\": {}, \"l\": []}", "||");

    /* loops, loop variables, scoping, namespace */
    expect("{% for x in xs %}{{ loop.index }}{{ x }}{% if not loop.last %},{% endif %}{% endfor %}",
           "{\"xs\": [\"a\", \"b\", \"c\"]}", "1a,2b,3c");
    expect("{% for x in xs if x > 1 %}{{ x }}/{{ loop.length }} {% else %}none{% endfor %}",
           "{\"xs\": [1, 2, 3]}", "2/2 3/2 ");
    expect("{% for x in [] %}x{% else %}empty{% endfor %}", NULL, "empty");
    expect("{% for i in range(9) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 4 %}{% break "
           "%}{% endif %}"
           "{{ i }}{% endfor %}",
           NULL, "023");
    expect("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{% endfor %}{{ x }}", NULL, "1");
    expect("{% set ns = namespace(n=0) %}{% for i in [1, 2, 3] %}{% set ns.n = ns.n + i %}{% "
           "endfor %}{{ ns.n }}",
           NULL, "6");
    expect("{% for m in messages[::-1] %}{{ m.role }}{% endfor %}",
           "{\"messages\": [{\"role\": \"a\"}, {\"role\": \"b\"}]}", "ba");

    /* filters, tests and methods */
    expect("{{ '  hi \\n' | trim }}|{{ 'ab' | upper }}|{{ [3, 1] | sort | join(',') }}|{{ "
           "'abc'[::-1] }}",
           NULL, "hi|AB|1,3|cba");
    expect("{{ {'b': 'é', 'a': [1, none]} | tojson }}", NULL, "{\"b\": \"é\", \"a\": [1, null]}");
    expect("{{ x.split('</think>')[-1].lstrip('\\n') }}", "{\"x\": \"<think>r</think>\\n\\nans\"}",
           "ans");
    expect("{{ 'a' in 'cat' }}{{ x is string }}{{ x is not none }}{{ 3 is odd }}", "{\"x\": \"s\"}",
           "TrueTrueTrueTrue");
    expect("{% macro m(a, b='B') %}<{{ a }}{{ b }}>{% endmacro %}{{ m(1) }}{{ m(2, b=3) }}", NULL,
           "<1B><23>");
    expect("{% set s %}in{{ 1 }}{% endset %}[{{ s }}]", NULL, "[in1]");

    /* errors: compile errors name the line, runtime errors carry the message */
    expect_error("ok\n\n{% include 'x' %}", NULL, "line 3: unsupported tag 'include'");
    expect_error("{{ x | bogus }}", NULL, "unsupported filter 'bogus'");
    expect_error("{{ raise_exception('bad roles') }}", NULL, "bad roles");
    expect_error("{{ 1 < 'a' }}", NULL, "not supported");
    expect_error("{{ [].append(1) }}", NULL, "unsafe");

    /* limits */
    {
        struct chat_template *ct = NULL;
        struct es_err err = {{0}};
        CHECK(ct_compile("{% for i in range(1000) %}{{ i }}{% endfor %}", &ct, &err) == ES_OK);
        struct ct_limits lim;
        ct_default_limits(&lim);
        lim.max_loop_iterations = 100;
        struct strbuf out = {0};
        sb_puts(&out, "keep");
        CHECK(ct_render_limited(ct, NULL, &lim, &out, &err) == ES_ERANGE);
        CHECK(strstr(err.msg, "loop iteration limit") != NULL);
        CHECK_STR(sb_cstr(&out), "keep"); /* a failed render leaves the buffer alone */
        ct_default_limits(&lim);
        lim.max_output_bytes = 50;
        CHECK(ct_render_limited(ct, NULL, &lim, &out, &err) == ES_ERANGE);
        sb_free(&out);
        ct_free(ct);
    }
    expect_error("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", NULL, "recursion limit");

    /* built-in templates compile and render */
    {
        const char *names[] = {"chatml", "llama3", "llama2", "plain"};
        const char *ctx = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], "
                          "\"add_generation_prompt\": true,"
                          " \"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}";
        for (int i = 0; i < 4; i++) {
            struct es_err err = {{0}};
            CHECK(ct_builtin(names[i]) != NULL);
            char *got = render(ct_builtin(names[i]), ctx, &err);
            CHECK(got && strstr(got, "hi"));
            free(got);
        }
        CHECK(ct_builtin("nope") == NULL);
        expect(ct_builtin("chatml"), ctx,
               "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        expect(ct_builtin("llama2"), ctx, "<s>[INST] hi [/INST]");
    }

    /* continue_final_message's cut, as transformers makes it: after the last
     * occurrence of the stripped content, not an earlier turn's text */
    {
        static const struct {
            const char *prompt, *final, *want; /* want NULL: not found */
        } cases[] = {
            {"U: Hi there|A: Hi|", "Hi ", "U: Hi there|A: Hi"}, /* template trimmed */
            {"U: Hi there|A: Hi |", "Hi ", "U: Hi there|A: Hi "},
            {"U: x|A:  Hi|", " Hi", "U: x|A:  Hi"},
            {"U: x|A: Hi|", "\xe3\x80\x80Hi\n", "U: x|A: Hi"}, /* U+3000 is whitespace */
            {"U: x|A: |", "  ", "U: x|A: |"},                  /* only whitespace: no cut */
            {"U: x|A: |", "", "U: x|A: |"},
            {"U: x|A: y|", "zz", NULL},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            struct es_err err = {{0}};
            size_t cut = 0, len = strlen(cases[i].prompt);
            enum es_status st = ct_continue_cut(cases[i].prompt, len, cases[i].final,
                                                strlen(cases[i].final), &cut, &err);
            if (!cases[i].want) {
                CHECK(st == ES_EINVAL);
                continue;
            }
            CHECK(st == ES_OK);
            CHECK(cut == strlen(cases[i].want) && !memcmp(cases[i].prompt, cases[i].want, cut));
        }
    }

    /* one compiled template, concurrent renders */
    {
        struct chat_template *ct = NULL;
        struct es_err err = {{0}};
        CHECK(ct_compile("{% for x in xs %}{{ loop.index0 }}:{{ x }}|{% endfor %}", &ct, &err) ==
              ES_OK);
        cJSON *ctx = cJSON_Parse("{\"xs\": [\"a\", \"b\"]}");
        struct thread_arg args[4];
        pthread_t th[4];
        for (int i = 0; i < 4; i++) {
            args[i] = (struct thread_arg){.ct = ct, .ctx = ctx};
            pthread_create(&th[i], NULL, render_many, &args[i]);
        }
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            CHECK(args[i].ok == 200);
        }
        cJSON_Delete(ctx);
        ct_free(ct);
    }
    return test_result("chat_template");
}
