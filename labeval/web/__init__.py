"""The officers' pages (检验机构监管信息平台), served by the same app as the API.

How a page is made:
- a litestar Controller with `include_in_schema = False` and `opt = {"session_roles": VIEW}` (or
  OFFICER, IMPORT, START_RUN from labeval.web.session; admin opens every page). The guard
  `labeval.web.session.signed_in` sends a stranger to /signin and answers 403 to other roles;
  the signed-in person is `request.user` (a labeval.db.users.User, `.actor` for the audit log);
- handlers take `conn` (one connection and transaction per request, as the API's) and return
  `labeval.web.templating.page(request, "name.html", **context)`, which adds `_`/`t` (the
  request's Translator, called with the English text and keyword values for its {placeholders};
  `t.number`, `t.percent`, `t.date`), `ngettext`, `lang` and `user`;
- templates extend "base.html" (block `title`, block `main`), import macros from "_macros.html"
  `with context`, write every visible string through `_` in an expression, numbers and dates through the
  `fmt_number`, `fmt_percent`, `fmt_date`, `fmt_datetime` filters, and every POST form carries
  `{{ csrf_input | safe }}`;
- Chinese in locales/zh_CN/LC_MESSAGES/<area>.po (`python -m tests.web_catalogue` lists what is
  missing); tests/test_web.py fails on untranslated template text or a missing translation;
- the handler class is added to PAGE_HANDLERS in labeval.web.routes.
Errors on pages are pages (labeval.web.errors); a form's own errors are shown in the form with
status 400/422 by the handler.
"""
