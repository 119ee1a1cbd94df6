/* Error codes: names, messages, and that shared codes are libuv's. */
#include <string.h>

#include "helpers.h"

START_TEST(error_codes_have_names_and_messages) {
  static const int codes[] = {
#define XX(name, value, msg) UVQ_##name,
    UVQ_ERRNO_MAP(XX)
#undef XX
  };
  size_t i;
  for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
    ck_assert_int_lt(codes[i], 0);
    ck_assert_str_ne(uvq_err_name(codes[i]), "UNKNOWN");
    ck_assert_str_ne(uvq_strerror(codes[i]), "unknown error");
    ck_assert_int_eq(strncmp(uvq_err_name(codes[i]), "UVQ_", 4), 0);
  }
  ck_assert_str_eq(uvq_err_name(UVQ_ECLOSED), "UVQ_ECLOSED");
  ck_assert_str_eq(uvq_err_name(UVQ_EFULL), "UVQ_EFULL");
}
END_TEST

START_TEST(shared_codes_are_libuv_codes) {
  ck_assert_int_eq(UVQ_EINVAL, UV_EINVAL);
  ck_assert_int_eq(UVQ_ENOMEM, UV_ENOMEM);
  ck_assert_int_eq(UVQ_EAGAIN, UV_EAGAIN);
  ck_assert_int_eq(UVQ_ETIMEDOUT, UV_ETIMEDOUT);
  /* uvq's own codes must not collide with anything libuv answers. */
  ck_assert_str_eq(uv_err_name(UV_EPIPE), uvq_err_name(UV_EPIPE));
  ck_assert_str_eq(uvq_strerror(UV_EPIPE), uv_strerror(UV_EPIPE));
}
END_TEST

START_TEST(unknown_codes_do_not_crash_or_allocate) {
  ck_assert_str_eq(uvq_err_name(12345), "UNKNOWN");
  ck_assert_str_eq(uvq_strerror(12345), "unknown error");
  ck_assert_str_eq(uvq_err_name(-29999), "UNKNOWN");
  ck_assert_str_eq(uvq_strerror(0), "unknown error");
}
END_TEST

Suite* errors_suite(void) {
  Suite* s = suite_create("errors");
  TCase* tc = tcase_create("errors");
  tcase_add_test(tc, error_codes_have_names_and_messages);
  tcase_add_test(tc, shared_codes_are_libuv_codes);
  tcase_add_test(tc, unknown_codes_do_not_crash_or_allocate);
  suite_add_tcase(s, tc);
  return s;
}
