/*
 * mtbench_prompts.h - single-answer grading prompts for the mtbench task:
 * loading a FastChat judge_prompts.jsonl, the built-in default (our own
 * wording, same placeholders), template filling and rating parsing.
 */
#ifndef EC_MTBENCH_PROMPTS_H
#define EC_MTBENCH_PROMPTS_H

#include <stdbool.h>

#include "status.h"
#include "strbuf.h"

enum mtp_kind { MTP_GENERAL, MTP_MATH, MTP_GENERAL_MULTI, MTP_MATH_MULTI, MTP_COUNT };

struct mtp_prompt {
    char *name; /* e.g. "single-v1" */
    char *system_prompt;
    char *prompt_template; /* Python str.format placeholders: {question}, {answer}, ... */
};

struct mtp_set {
    struct mtp_prompt p[MTP_COUNT];
};

/* Loads the four single-answer prompts by name (single-v1, single-math-v1,
 * single-v1-multi-turn, single-math-v1-multi-turn) from path, or the
 * built-in set when path is NULL. */
enum es_status mtp_load(const char *path, struct mtp_set *set, struct es_err *err);
void mtp_free(struct mtp_set *set);

/* Fills {name} placeholders from names[i] -> values[i]; "{{" and "}}" stand
 * for braces, as in str.format. An unknown placeholder is kept verbatim. */
enum es_status mtp_fill(const char *tmpl, const char *const *names, const char *const *values,
                        int n, struct strbuf *out);

/* The rating in "[[x]]" (first match), else in "[x]", as FastChat parses
 * it; -1 when there is none. */
double mtp_rating(const char *judgment);

#endif
