/*
 * mtbench_prompts.c - judge prompt loading, the built-in default prompts,
 * template filling and rating parsing for the mtbench task.
 *
 * The default prompts are the project's own wording; they use the same
 * names and placeholders as FastChat's judge_prompts.jsonl so that either
 * can be used. Owns the strings of a loaded set; does no I/O but reading
 * the prompts file.
 */
#include "mtbench_prompts.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static const char *const mtp_names[MTP_COUNT] = {
    "single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"};

#define MTP_RULES                                                                                  \
    "Grade the assistant's answer on a scale from 1 to 10, where 1 is useless or wrong and 10 "    \
    "is excellent. First write a brief justification (a few sentences, be impartial and do not "   \
    "let the answer's length sway you), then give the grade on its own line in exactly this "      \
    "form: \"Rating: [[5]]\"."

static const char *const mtp_default_system[MTP_COUNT] = {
    "You are a careful grader of AI assistant answers.",
    "You are a careful grader of AI assistant answers.",
    "You are a careful grader. You will see a two-turn conversation between a user and an AI "
    "assistant; grade only the assistant's reply to the second user message. " MTP_RULES,
    "You are a careful grader. You will see a two-turn conversation between a user and an AI "
    "assistant, and a reference solution. Grade only the assistant's reply to the second user "
    "message, judging correctness against the reference first. " MTP_RULES,
};

static const char *const mtp_default_template[MTP_COUNT] = {
    "[Task]\nJudge how helpful, relevant, accurate, deep and clear the answer below is. " MTP_RULES
    "\n\n[Question]\n{question}\n\n[Answer begins]\n{answer}\n[Answer ends]",
    "[Task]\nJudge the answer below for correctness first, then helpfulness, comparing it with "
    "the reference solution. " MTP_RULES
    "\n\n[Question]\n{question}\n\n[Reference solution begins]\n{ref_answer_1}\n[Reference "
    "solution ends]\n\n[Answer begins]\n{answer}\n[Answer ends]",
    "[Conversation begins]\n\nUser: {question_1}\n\nAssistant: {answer_1}\n\nUser: "
    "{question_2}\n\nAssistant: {answer_2}\n\n[Conversation ends]",
    "[Reference solution begins]\n\nUser: {question_1}\n\nReference: {ref_answer_1}\n\nUser: "
    "{question_2}\n\nReference: {ref_answer_2}\n\n[Reference solution ends]\n\n[Conversation "
    "begins]\n\nUser: {question_1}\n\nAssistant: {answer_1}\n\nUser: {question_2}\n\nAssistant: "
    "{answer_2}\n\n[Conversation ends]",
};

void mtp_free(struct mtp_set *set)
{
    for (int i = 0; i < MTP_COUNT; i++) {
        free(set->p[i].name);
        free(set->p[i].system_prompt);
        free(set->p[i].prompt_template);
    }
    memset(set, 0, sizeof(*set));
}

static enum es_status set_prompt(struct mtp_prompt *p, const char *name, const char *sys,
                                 const char *tmpl)
{
    p->name = strdup(name);
    p->system_prompt = strdup(sys);
    p->prompt_template = strdup(tmpl);
    return p->name && p->system_prompt && p->prompt_template ? ES_OK : ES_ENOMEM;
}

enum es_status mtp_load(const char *path, struct mtp_set *set, struct es_err *err)
{
    memset(set, 0, sizeof(*set));
    if (!path) {
        for (int i = 0; i < MTP_COUNT; i++)
            if (set_prompt(&set->p[i], mtp_names[i], mtp_default_system[i],
                           mtp_default_template[i]) != ES_OK) {
                mtp_free(set);
                return es_fail(err, ES_ENOMEM, "out of memory");
            }
        return ES_OK;
    }
    FILE *f = fopen(path, "r");
    if (!f) return es_fail(err, ES_ENOTFOUND, "cannot open judge prompts %s", path);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        cJSON *j = js_parse(line, (size_t)n, 0, NULL);
        const char *name = NULL, *sys = NULL, *tmpl = NULL;
        if (j && js_get_str(j, "name", true, &name, NULL) == ES_OK &&
            js_get_str(j, "system_prompt", true, &sys, NULL) == ES_OK &&
            js_get_str(j, "prompt_template", true, &tmpl, NULL) == ES_OK) {
            for (int i = 0; i < MTP_COUNT; i++)
                if (!set->p[i].name && strcmp(name, mtp_names[i]) == 0)
                    set_prompt(&set->p[i], name, sys, tmpl);
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    for (int i = 0; i < MTP_COUNT; i++)
        if (!set->p[i].name) {
            mtp_free(set);
            return es_fail(err, ES_EFORMAT, "%s: no judge prompt named '%s'", path, mtp_names[i]);
        }
    return ES_OK;
}

enum es_status mtp_fill(const char *tmpl, const char *const *names, const char *const *values,
                        int n, struct strbuf *out)
{
    sb_clear(out);
    sb_puts(out, "");
    for (const char *p = tmpl; *p;) {
        if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
            sb_putc(out, p[0]);
            p += 2;
            continue;
        }
        if (*p == '{') {
            const char *end = strchr(p, '}');
            if (end) {
                size_t len = (size_t)(end - p - 1);
                int k = 0;
                while (k < n && !(strlen(names[k]) == len && memcmp(names[k], p + 1, len) == 0))
                    k++;
                if (k < n) {
                    if (sb_puts(out, values[k]) != ES_OK) return ES_ENOMEM;
                    p = end + 1;
                    continue;
                }
            }
        }
        if (sb_putc(out, *p++) != ES_OK) return ES_ENOMEM;
    }
    return ES_OK;
}

/* Matches "\[\[(\d+\.?\d*)\]\]" (brackets = 2) or "\[(\d+\.?\d*)\]" (1). */
static bool find_rating(const char *s, int brackets, double *out)
{
    for (const char *p = s; *p; p++) {
        int b = 0;
        while (b < brackets && p[b] == '[')
            b++;
        if (b < brackets) continue;
        const char *q = p + brackets, *num = q;
        if (!isdigit((unsigned char)*q)) continue;
        while (isdigit((unsigned char)*q))
            q++;
        if (*q == '.') q++;
        while (isdigit((unsigned char)*q))
            q++;
        int e = 0;
        while (e < brackets && q[e] == ']')
            e++;
        if (e < brackets) continue;
        *out = strtod(num, NULL);
        return true;
    }
    return false;
}

double mtp_rating(const char *judgment)
{
    double r;
    if (find_rating(judgment, 2, &r)) return r;
    if (find_rating(judgment, 1, &r)) return r;
    return -1;
}
