// Client-side routes. The server answers every one of these paths with index.html
// (src/api/web.rs), so each is a link that can be shared, bookmarked or reloaded.
import { createRouter, createWebHistory } from 'vue-router'
import { setUnauthorizedHandler } from './api/client'
import { forgetUser, gate, loadSession, type Access } from './lib/session'
import CreateView from './views/CreateView.vue'

declare module 'vue-router' {
  interface RouteMeta {
    /** Who may open the page (lib/session.ts `gate`). */
    access?: Access
  }
}

export const router = createRouter({
  history: createWebHistory(),
  routes: [
    { path: '/', name: 'create', component: CreateView, meta: { access: 'tokens' } },
    // The task page holds the viewer; it and the lists are split into their own chunks.
    {
      path: '/tasks/:id',
      name: 'task',
      component: () => import('./views/TaskView.vue'),
      props: true,
      meta: { access: 'tokens' },
    },
    { path: '/library', name: 'library', component: () => import('./views/LibraryView.vue'), meta: { access: 'tokens' } },
    { path: '/history', name: 'history', component: () => import('./views/HistoryView.vue'), meta: { access: 'tokens' } },
    { path: '/signin', name: 'signin', component: () => import('./views/SignInView.vue') },
    { path: '/account', name: 'account', component: () => import('./views/AccountView.vue'), meta: { access: 'user' } },
    {
      path: '/console',
      component: () => import('./views/console/ConsoleLayout.vue'),
      meta: { access: 'admin' },
      children: [
        { path: '', name: 'console', component: () => import('./views/console/DashboardView.vue') },
        { path: 'channels', name: 'console-channels', component: () => import('./views/console/ChannelsView.vue') },
        { path: 'users', name: 'console-users', component: () => import('./views/console/UsersView.vue') },
        { path: 'tokens', name: 'console-tokens', component: () => import('./views/console/TokensView.vue') },
        { path: 'usage', name: 'console-usage', component: () => import('./views/console/UsageView.vue') },
        { path: 'tasks', name: 'console-tasks', component: () => import('./views/HistoryView.vue'), props: { everyone: true } },
        { path: 'audit', name: 'console-audit', component: () => import('./views/console/AuditView.vue') },
        { path: 'settings', name: 'console-settings', component: () => import('./views/console/SettingsView.vue') },
        { path: 'prices', name: 'console-prices', component: () => import('./views/console/PricesView.vue') },
      ],
    },
    { path: '/:rest(.*)*', name: 'not-found', component: () => import('./views/NotFoundView.vue') },
  ],
  scrollBehavior: () => ({ top: 0 }),
})

// Who is signed in is asked once, before the first page; pages that need an account
// send an anonymous visitor to sign in, and back afterwards.
router.beforeEach(async (to) => {
  await loadSession()
  return gate(to.meta.access, to.fullPath) ?? true
})

// A 401 from the API means the session ended (expired, revoked, signed out elsewhere):
// on a page that needs an account, sign in again and come back.
setUnauthorizedHandler(() => {
  forgetUser()
  const current = router.currentRoute.value
  const redirect = gate(current.meta.access, current.fullPath)
  if (redirect) void router.push(redirect)
})

// Move focus to the new page's heading so screen readers announce the change.
router.afterEach(() => {
  requestAnimationFrame(() => {
    const heading = document.querySelector<HTMLElement>('main h1')
    if (heading) {
      heading.setAttribute('tabindex', '-1')
      heading.focus({ preventScroll: true })
    }
  })
})
