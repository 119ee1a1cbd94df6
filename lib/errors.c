/* Error names and messages. uvq's codes come from one X-macro map in uvq.h,
 * so a code cannot exist without a name and a message. Other libuv codes are
 * answered by libuv, but only codes libuv knows: for an unknown code libuv
 * builds a string on the heap that nobody frees. */
#include "internal.h"

static int uvq__is_uv_code(int err) {
  switch (err) {
#define XX(code, _) case UV_##code:
    UV_ERRNO_MAP(XX)
#undef XX
    return 1;
  }
  return 0;
}

const char* uvq_strerror(int err) {
  switch (err) {
#define XX(name, value, msg) case value: return msg;
    UVQ_ERRNO_MAP(XX)
#undef XX
  }
  if (uvq__is_uv_code(err))
    return uv_strerror(err);
  return "unknown error";
}

const char* uvq_err_name(int err) {
  switch (err) {
#define XX(name, value, msg) case value: return "UVQ_" #name;
    UVQ_ERRNO_MAP(XX)
#undef XX
  }
  if (uvq__is_uv_code(err))
    return uv_err_name(err);
  return "UNKNOWN";
}
